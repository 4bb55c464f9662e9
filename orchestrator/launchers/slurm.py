"""Slurm launcher: each trial is one batch job on the Slurm node that a `launcher: slurm` machine is.

- A machine is one node (`slurm.node`, default the machine's name), reached through the Slurm client commands
  on the controller's host. A trial asking for g GPUs is `sbatch --gres=gpu:g --nodelist=NODE`; one asking for
  every GPU of the node (or `slurm.exclusive: always`) gets the whole node (`--exclusive --mem=0`); a CPU trial
  gets the node's cores divided by its `cpu_slots` (`--cpus-per-task`). Slurm picks the GPUs and sets
  CUDA_VISIBLE_DEVICES; the trial's slot label is the controller's share, not the GPU numbers.
- The job's output goes to the trial's `train.log` (`--output`), which the controller reads as the job writes it:
  the machine's `workdir` must be on a file system the controller and the node share (as for submitit's folder).
  One thread per launcher tails every job's file (new lines every 0.1 s) and reads every job's state with one
  `squeue` per `slurm.poll_s`; a job that leaves the queue ends with its exit status (squeue's wait status).
- Cancel (and the controller's timeout) is `scancel`: Slurm signals the job (TERM, KILL after its KillWait).
  `--time` is the study's timeout plus a minute, so a job whose controller died still ends; `--no-requeue`, so
  Slurm never runs a trial a second time by itself.
- Jobs outlive the controller (Capability.OUTLIVES_CONTROLLER): the job id is recorded on the trial row
  (`JobHandle.job_ref`), and after a restart `reattach` finds the job by it (or by its unique job name, for a
  trial whose controller died between sbatch and recording the id) and streams its log again from the start:
  a running trial is followed, not run twice.
- A node that fails under a job (NODE_FAIL) ends the trial as a lost machine; `probe` reads the node's state
  (`scontrol show node`): a drained, draining or down node takes no trials and `orch fleet status` says so
  (`MachineInfo.node_state`), with its Slurm reason.
- The job's environment is the controller's (without SLURM_* job variables) plus the machine's and the trial's,
  passed through sbatch's own environment (`--export=ALL`): secrets are in no argv and no file of ours.

Why plain sbatch/squeue/scontrol/scancel and not submitit: submitit runs a pickled Python callable and reads job
states from `sacct`, so it needs Slurm accounting (slurmdbd and a database): without it a job's state stays UNKNOWN
and a cancelled job's result waits forever (ENVIRONMENT.md). A trial here is an argv whose output must stream line
by line and whose job must be found again after a restart; four client commands do that with no accounting and no
extra package.

Containers (`container.runtime` other than none) are not supported on Slurm machines yet: the fleet file says so.
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .. import warm
from ..config.errors import OrchError
from ..config.fleet import COMMAND_PATTERN, Capability, EnvMap, Machine, _Strict
from ..config.validation import FIX_MARK
from ..config.yaml_source import YamlDoc
from ..records import JobSpec
from .base import Event, ExitEvent, JobHandle, JobRecord, Launcher, LineEvent, MachineInfo, Slot
from ..records import MAX_LINE_BYTES

TAIL_S = 0.1  # how often the job files are read for new output
#: sbatch options the launcher sets itself (the machine's `sbatch_args` must not)
OWN_OPTIONS = ("--output", "--error", "--job-name", "--chdir", "--open-mode", "--requeue", "--no-requeue", "--export",
               "--parsable", "--wrap", "--nodelist", "--time", "--gres", "--exclusive", "--array")
ACTIVE = {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
          "STAGE_OUT", "STOPPED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "PREEMPTED_REQUEUE"}
NODE_LOST = {"NODE_FAIL", "BOOT_FAIL"}
NODE_LOST = {"NODE_FAIL", "BOOT_FAIL"}
#: squeue's fields for the queue view, `|`-separated; the job name last (it may hold a `|` itself)
QUEUE_KEYS = ("job", "state", "reason", "nodes", "requested", "partition", "user", "submitted", "started", "resources",
              "name")
QUEUE_FIELDS = ("JobID:|,State:|,Reason:300|,NodeList:2000|,ReqNodes:2000|,Partition:|,UserName:|,SubmitTime:|,"
                "StartTime:|,tres-per-node:200|,Name:500")


class SlurmError(OrchError):
    """A Slurm command failed or slurmctld cannot be reached."""


class SlurmSpec(_Strict):
    """How a `launcher: slurm` machine's jobs are submitted (often set once under `defaults:`)."""

    node: str | None = None  # the Slurm node this machine is (default: the machine's name)
    partition: str | None = None  # sbatch --partition (default: the cluster's default partition)
    account: str | None = None
    qos: str | None = None
    #: whole node: `auto` when a trial asks for every GPU of the node; `always`; `never` (then only --gres)
    exclusive: Literal["auto", "always", "never"] = "auto"
    gres: str = "gpu"  # the GRES that counts the node's GPUs (`gpu`, or `gpu:h100` for one type of them)
    sbatch_args: list[str] = Field(default_factory=list)  # more sbatch options, each `--name=value`
    poll_s: float = Field(default=0.5, ge=0.05, le=60)  # how often job states are read (one squeue for all jobs)
    command_timeout_s: float = Field(default=30, gt=0, le=600)  # one sbatch / squeue / scancel call
    lost_after_s: float = Field(default=120, gt=0, le=86400)  # slurmctld silent this long: running trials are lost
    bin_dir: str | None = None  # where sbatch, squeue, scontrol and scancel are (default: PATH)
    env: EnvMap = Field(default_factory=dict)  # environment of those commands, e.g. SLURM_CONF

    @field_validator("node", "partition", "account", "qos")
    @classmethod
    def _one_word(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$", value):
            raise ValueError(f"{value!r} is not a Slurm name{FIX_MARK}use letters, digits, '.', '_', ':' and '-'")
        return value

    @field_validator("gres")
    @classmethod
    def _gres_form(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+)?$", value):
            raise ValueError(f"gres {value!r} is not NAME or NAME:TYPE{FIX_MARK}write e.g. gpu or gpu:h100")
        return value

    @field_validator("bin_dir")
    @classmethod
    def _bin_dir(cls, value: str | None) -> str | None:
        if value is not None and not COMMAND_PATTERN.match(value):
            raise ValueError(f"{value!r} is not a directory path{FIX_MARK}write one path, e.g. /opt/slurm/bin")
        return value

    @field_validator("sbatch_args")
    @classmethod
    def _sbatch_args(cls, args: list[str]) -> list[str]:
        for arg in args:
            name = arg.split("=", 1)[0]
            if not re.match(r"^--[a-z][a-z-]*(=[^\n\r\0]*)?$", arg):
                raise ValueError(f"sbatch argument {arg!r} is not `--name` or `--name=value`{FIX_MARK}write each "
                                 "option as one item, e.g. --constraint=h100")
            if name in OWN_OPTIONS:
                raise ValueError(f"sbatch argument {arg!r} is set by the launcher itself{FIX_MARK}remove it (the "
                                 "launcher sets " + ", ".join(OWN_OPTIONS) + ")")
        return args


class SlurmMachine(Machine):
    """A `launcher: slurm` machine: one node of a Slurm cluster."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.OUTLIVES_CONTROLLER, Capability.NODE_STATE,
                                                               Capability.QUEUES_JOBS})
    launcher: Literal["slurm"] = "slurm"
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)

    @property
    def node(self) -> str:
        return self.slurm.node or self.name

    @model_validator(mode="after")
    def _bare_jobs(self) -> "SlurmMachine":
        if self.container.runtime != "none":
            raise ValueError(f"the slurm launcher runs jobs without a container runtime of its own{FIX_MARK}set "
                             "`container: {runtime: none}` on the machine (a container can still be started by the "
                             "trainer's command, e.g. through the cluster's own container plug-in)")
        return self

    @classmethod
    def check_fleet(cls, doc: YamlDoc, entries: list[tuple[int, Machine, dict]], defaults: dict) -> None:
        """Two machines are never one node (their trials would share its GPUs unknowingly)."""
        seen: dict[str, str] = {}
        for index, machine, _raw in entries:
            if machine.node in seen:
                raise doc.error(("machines", index), f"slurm machines {seen[machine.node]!r} and {machine.name!r} are "
                                f"both node {machine.node}", fix="give each slurm machine its own `slurm: {node: NAME}`")
            seen[machine.node] = machine.name


# ---- parsing Slurm's output --------------------------------------------------------------------------------------
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:]*)=")


def parse_fields(line: str) -> dict[str, str]:
    """`scontrol -o show ...`'s `Key=value Key=value` line; a value may hold spaces (Reason=...)."""
    keys = list(_KEY.finditer(line))
    out = {}
    for i, match in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        out[match.group(1)] = line[match.end():end].strip()
    return out


def gres_count(gres: str, name: str) -> tuple[int, str | None]:
    """(count, type) of GRES `name` (`gpu` or `gpu:TYPE`) in a node's Gres field, e.g. `gpu:h100:8(S:0-1)`."""
    want_name, _, want_type = name.partition(":")
    total, found_type = 0, None
    for item in re.split(r",(?![^()]*\))", gres or ""):
        parts = re.sub(r"\(.*\)$", "", item.strip()).split(":")
        if not parts or parts[0] != want_name or len(parts) < 2:
            continue
        kind = parts[1] if len(parts) == 3 else None
        if want_type and kind != want_type:
            continue
        try:
            total += int(parts[-1])
        except ValueError:
            continue
        found_type = found_type or kind
    return total, found_type


def exit_status(wait_status: int) -> int:
    """A shell's view of a wait status: the exit code, or minus the signal that killed the job."""
    return -(wait_status & 0x7F) if wait_status & 0x7F else wait_status >> 8


def job_name(study: str, trial: int, workdir: Path) -> str:
    """Unique per trial directory: a trial found again by name after a restart is this one, not a namesake."""
    tag = hashlib.sha1(str(Path(workdir).resolve()).encode()).hexdigest()[:10]
    return f"orch.{study}.{trial:04d}.{tag}"


@dataclass
class _Tracked:
    handle: "SlurmJob"
    machine: SlurmMachine
    events: "queue.Queue[Event]"
    offset: int = 0
    pending: bytes = b""
    cut: bool = False  # the start of an overlong line went out: drop the rest of it
    ended: tuple[str, int, str] | None = None  # (state, wait status, reason) once squeue says it ended
    silent_since: float | None = None  # squeue failing since (monotonic)
    done: threading.Event = field(default_factory=threading.Event)


class SlurmJob(JobHandle):
    def __init__(self, launcher: "SlurmLauncher", key: int, job_id: str, machine: SlurmMachine, workdir: Path,
                 log_path: Path, command: list[str]) -> None:
        self.launcher, self.key, self.job_id, self.machine = launcher, key, job_id, machine
        self.workdir, self.log_path, self.command = workdir, log_path, command
        self.job_ref = job_id
        self.pid = None  # the job runs on the node, under slurmstepd
        self.pid_start = None
        self.cancel_reason: str | None = None

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        threading.Thread(target=self.launcher.scancel, args=(self.machine, self.job_id), daemon=True,
                         name=f"scancel-{self.job_id}").start()


class SlurmLauncher(Launcher):
    name = "slurm"
    machine_type = SlurmMachine

    def __init__(self, *, command_timeout_s: float | None = None) -> None:
        self.command_timeout_s = command_timeout_s  # None: each machine's slurm.command_timeout_s
        self._lock = threading.Lock()
        self._jobs: dict[str, _Tracked] = {}
        self._cores: dict[str, int] = {}  # per machine: the node's cores at its last probe
        self._gpus: dict[str, int] = {}  # per machine: the node's GPUs at its last probe
        self._orphans: dict[str, SlurmMachine] = {}  # jobs to scancel once slurmctld answers again
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_status(cls, probe_timeout_s: float) -> "SlurmLauncher":
        return cls(command_timeout_s=probe_timeout_s)

    # -- the client commands
    def _run(self, machine: SlurmMachine, argv: list[str], env: dict[str, str] | None = None,
             timeout_s: float | None = None) -> subprocess.CompletedProcess:
        spec = machine.slurm
        exe = os.path.join(os.path.expanduser(spec.bin_dir), argv[0]) if spec.bin_dir else argv[0]
        timeout = timeout_s or self.command_timeout_s or spec.command_timeout_s
        try:
            return subprocess.run([exe, *argv[1:]], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=timeout, env={**(env if env is not None else os.environ), **spec.env})
        except subprocess.TimeoutExpired:
            raise SlurmError(f"slurm machine {machine.name!r}: `{argv[0]}` did not answer within {timeout:g} s: is "
                             "slurmctld up? (fix: check `scontrol ping` on this host; slurm.command_timeout_s sets "
                             "the wait)") from None
        except OSError as exc:
            raise SlurmError(f"slurm machine {machine.name!r}: cannot run {exe!r}: {exc.strerror or exc} (fix: install "
                             "the Slurm client commands on this host, or set slurm.bin_dir)") from None

    @staticmethod
    def _said(result: subprocess.CompletedProcess) -> str:
        return (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:][0] if (
            result.stderr.strip() or result.stdout.strip()) else f"exit status {result.returncode}"

    # -- probe
    def probe(self, machine: Machine) -> MachineInfo:
        """The node's state, cores and GPUs (its GRES) from `scontrol show node`; drained or down: not reachable."""
        node = machine.node
        try:
            result = self._run(machine, ["scontrol", "-o", "show", "node", node])
        except SlurmError as exc:
            return MachineInfo(reachable=False, error=str(exc))
        if result.returncode != 0 or "NodeName=" not in result.stdout:
            return MachineInfo(reachable=False, error=f"slurm machine {machine.name!r}: node {node}: "
                               f"{self._said(result)} (fix: check `slurm.node` (default: the machine's name) against "
                               "`sinfo -N`, and that slurmctld answers)")
        facts = parse_fields(result.stdout.strip().splitlines()[0])
        flags = set(facts.get("State", "").upper().replace("*", "+NOT_RESPONDING").split("+"))
        reason = facts.get("Reason", "") or "no reason given"
        partition = machine.slurm.partition
        if partition and partition not in facts.get("Partitions", "").split(","):
            return MachineInfo(reachable=False, error=f"slurm machine {machine.name!r}: node {node} is not in partition "
                               f"{partition} (it is in {facts.get('Partitions') or 'none'}) (fix: correct slurm.partition "
                               "or slurm.node)")
        if flags & {"DOWN", "NOT_RESPONDING", "FAIL", "POWERED_DOWN", "POWER_DOWN", "FUTURE"}:
            return MachineInfo(reachable=False, node_state="down", error=f"slurm node {node} is down: {reason} (fix: "
                               f"repair it, then `scontrol update nodename={node} state=resume`)")
        if flags & {"DRAIN", "DRAINED", "DRAINING", "FAILING"}:
            busy = bool(flags & {"MIXED", "ALLOCATED", "COMPLETING"})
            state = "draining" if busy else "drained"
            return MachineInfo(reachable=False, node_state=state, error=f"slurm node {node} is {state}: {reason} "
                               f"(fix: `scontrol update nodename={node} state=resume` when it should take jobs again)")
        cores = int(facts.get("CPUTot") or facts.get("CPUEfctv") or 0) or None
        count, kind = gres_count(facts.get("Gres", ""), machine.slurm.gres)
        if machine.gpus == "none":
            count = 0
        elif isinstance(machine.gpus, int):
            count = min(count, machine.gpus) if count else machine.gpus
        self._cores[machine.name] = cores or 1
        self._gpus[machine.name] = count
        return MachineInfo(reachable=True, gpu_count=count, gpu_type=kind or machine.gpu_type if count else None,
                           cpu_count=cores)

    # -- the manager's queue (`orch fleet queue`)
    def queue(self, machines: list[Machine]) -> list[dict]:
        """Slurm's jobs on these machines' nodes: running there, or pending for them (asked for one of the nodes,
        or for no node in a partition they may run in: one a machine names, or any when a machine names none, since
        the cluster's default is not known here). Orch's own trials are named by `job_name`: their study and trial
        come with them. One squeue per set of client settings; a client that fails raises SlurmError."""
        groups: dict[tuple, list[SlurmMachine]] = {}
        for machine in machines:
            key = (machine.slurm.bin_dir, tuple(sorted(machine.slurm.env.items())))
            groups.setdefault(key, []).append(machine)
        out = []
        for group in groups.values():
            by_node = {m.node: m for m in group}
            partitions = {m.slurm.partition for m in group}
            result = self._run(group[0], ["squeue", "-h", "--states=PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED",
                                          "-O", QUEUE_FIELDS])
            if result.returncode != 0:
                raise SlurmError(f"squeue failed: {self._said(result)} (fix: check that slurmctld answers: "
                                 "`scontrol ping`)")
            for line in result.stdout.splitlines():
                parts = [p.strip() for p in line.split("|", len(QUEUE_KEYS) - 1)]
                if len(parts) < len(QUEUE_KEYS) or not parts[0]:
                    continue
                job = dict(zip(QUEUE_KEYS, parts))
                nodes = self._hostnames(group[0], job["nodes"] if job["state"] != "PENDING" else job["requested"])
                mine = [by_node[n] for n in nodes if n in by_node]
                if not mine and not (job["state"] == "PENDING" and not nodes
                                     and (None in partitions or job["partition"] in partitions)):
                    continue
                named = re.match(r"^orch\.(.+)\.(\d{4,})\.[0-9a-f]{10}$", job["name"])
                out.append({"job": job["job"], "name": job["name"], "state": job["state"], "reason": job["reason"],
                            "machine": ",".join(m.name for m in mine) or None, "partition": job["partition"],
                            "user": job["user"], "submitted": job["submitted"],
                            "started": job["started"] if job["state"] != "PENDING" else None,
                            "resources": job["resources"] if job["resources"] not in ("", "N/A") else None,
                            "study": named.group(1) if named else None,
                            "trial": int(named.group(2)) if named else None})
        return out

    def _hostnames(self, machine: SlurmMachine, nodes: str) -> list[str]:
        """A Slurm host list (`sa,sb`, `gpu[01-04]`) as names; Slurm expands the bracketed forms itself."""
        nodes = nodes.strip()
        if not nodes or nodes in ("(null)", "N/A") or nodes.startswith("("):
            return []
        if "[" not in nodes:
            return nodes.split(",")
        result = self._run(machine, ["scontrol", "show", "hostnames", nodes])
        return result.stdout.split() if result.returncode == 0 else []

    # -- start
    def start(self, job: JobSpec, machine: Machine, slot: Slot, workdir: Path,
              events: "queue.Queue[Event]") -> "SlurmJob":
        self._cancel_orphans()
        workdir.mkdir(parents=True, exist_ok=True)
        job = warm.prepare(self, job, machine, str(workdir.resolve()))  # the shared workdir: staged from here
        events = warm.watch(events, job)
        log_path = workdir / "train.log"
        script = workdir / "job.sbatch"
        script.write_text(f"#!/bin/bash\n# trial {job.trial} of study {job.study}, submitted by orch\n"
                          f"exec {shlex.join(job.argv)}\n")
        argv = ["sbatch", "--parsable", f"--job-name={job_name(job.study, job.trial, workdir)}",
                f"--output={log_path}", "--open-mode=append", f"--chdir={workdir}", "--no-requeue", "--export=ALL",
                f"--nodelist={machine.node}", f"--time={max(1, math.ceil(job.timeout_s / 60) + 1)}"]
        spec = machine.slurm
        argv += [f"--{name}={value}" for name, value in (("partition", spec.partition), ("account", spec.account),
                                                           ("qos", spec.qos)) if value]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) or k == "SLURM_CONF"}
        env.pop("CUDA_VISIBLE_DEVICES", None)  # Slurm sets it for the GPUs it allocates
        env.update({**machine.env, **job.env, **job.secret_env, "PYTHONUNBUFFERED": "1"})
        if slot.gpu_ids:
            argv.append(f"--gres={spec.gres}:{len(slot.gpu_ids)}")
            whole = self._gpus.get(machine.name)
            if spec.exclusive == "always" or (spec.exclusive == "auto" and whole and len(slot.gpu_ids) >= whole):
                argv += ["--exclusive", "--mem=0"]
        else:
            cores = max(1, self._cores.get(machine.name, 1) // max(1, machine.resolved_cpu_slots(self._cores.get(machine.name))))
            argv.append(f"--cpus-per-task={cores}")
            if spec.exclusive == "always":
                argv += ["--exclusive", "--mem=0"]
            env["CUDA_VISIBLE_DEVICES"] = ""
            env.setdefault("OMP_NUM_THREADS", str(cores))
        argv += [*spec.sbatch_args, str(script)]
        result = self._run(machine, argv, env=env)
        job_id = result.stdout.strip().split(";")[0]
        if result.returncode != 0 or not job_id.isdigit():
            raise SlurmError(f"slurm machine {machine.name!r}: sbatch refused trial {job.trial}: {self._said(result)} "
                             "(fix: the study's resources or the machine's slurm settings must fit the node)")
        handle = SlurmJob(self, job.trial, job_id, machine, workdir, log_path, list(job.argv))
        self._track(handle, machine, events)
        return handle

    # -- re-attach
    def reattach(self, record: JobRecord, machine: Machine, events: "queue.Queue[Event]") -> "SlurmJob | None":
        """The trial's job by its recorded id, else by its unique name (the controller died between sbatch and
        recording the id); None when Slurm no longer knows it (ended longer than MinJobAge ago). A job that ended
        meanwhile is attached too: its log is read and its exit status reported."""
        job_id = record.job_ref
        name = job_name(record.study, record.trial, record.workdir)
        if job_id is None:
            result = self._run(machine, ["squeue", "-h", "--states=all", f"--name={name}", "-O", "JobID:|,State:|"])
            if result.returncode != 0:
                raise SlurmError(f"slurm machine {machine.name!r}: cannot look up trial {record.trial}'s job: "
                                 f"{self._said(result)} (fix: `orch study run` again once slurmctld answers)")
            found = [line.split("|") for line in result.stdout.splitlines() if line.strip()]
            live = [f[0] for f in found if f[1] in ACTIVE] or [f[0] for f in found]
            if not live:
                return None
            job_id = max(live, key=int)
        states = self._states(machine, [job_id])
        if states is None:
            raise SlurmError(f"slurm machine {machine.name!r}: cannot read the state of trial {record.trial}'s job "
                             f"{job_id}: slurmctld does not answer (fix: `orch study run` again once it does; the job "
                             "is left as it is)")
        if job_id not in states:
            return None
        handle = SlurmJob(self, record.trial, job_id, machine, record.workdir, record.log_path, [])
        self._track(handle, machine, events)
        return handle

    # -- cancel
    def scancel(self, machine: SlurmMachine, job_id: str) -> None:
        try:
            result = self._run(machine, ["scancel", job_id])
        except SlurmError:
            result = None
        if result is None or (result.returncode != 0 and "Invalid job id" not in (result.stderr or "")):
            with self._lock:
                self._orphans[job_id] = machine  # cancelled again before the next submission

    def _cancel_orphans(self) -> None:
        with self._lock:
            orphans, self._orphans = dict(self._orphans), {}
        for job_id, machine in orphans.items():
            self.scancel(machine, job_id)

    # -- following jobs
    def _track(self, handle: SlurmJob, machine: SlurmMachine, events: "queue.Queue[Event]") -> None:
        with self._lock:
            self._jobs[handle.job_id] = _Tracked(handle, machine, events)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._follow, daemon=True, name="slurm-follow")
                self._thread.start()

    def _states(self, machine: SlurmMachine, job_ids: list[str]) -> dict[str, tuple[str, int, str]] | None:
        """Job id -> (state, wait status, reason) of the jobs Slurm still knows; None when slurmctld does not answer."""
        try:
            result = self._run(machine, ["squeue", "-h", "--states=all", "-j", ",".join(job_ids),
                                         "-O", "JobID:|,State:|,exit_code:|,Reason:|"])
        except SlurmError:
            return None
        if result.returncode != 0:
            return {} if "Invalid job id" in (result.stderr or "") else None
        out = {}
        for line in result.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 4 and parts[0].strip():
                try:
                    status = int(parts[2] or 0)
                except ValueError:
                    status = 0
                out[parts[0].strip()] = (parts[1].strip(), status, parts[3].strip())
        return out

    def _follow(self) -> None:
        next_poll = 0.0
        while not self._closed.is_set():
            with self._lock:
                tracked = list(self._jobs.values())
            if not tracked:
                with self._lock:
                    if not self._jobs:
                        self._thread = None
                        return
                continue
            for job in tracked:
                self._read(job)
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + min(j.machine.slurm.poll_s for j in tracked)
                self._poll(tracked, now)
            self._closed.wait(TAIL_S)

    def _poll(self, tracked: list[_Tracked], now: float) -> None:
        by_commands: dict[tuple, list[_Tracked]] = {}
        for job in tracked:  # one squeue for the jobs of machines that use the same client settings
            key = (job.machine.slurm.bin_dir, tuple(sorted(job.machine.slurm.env.items())))
            by_commands.setdefault(key, []).append(job)
        for jobs in by_commands.values():
            states = self._states(jobs[0].machine, [j.handle.job_id for j in jobs])
            for job in jobs:
                if states is None:
                    job.silent_since = job.silent_since or now
                    if now - job.silent_since > job.machine.slurm.lost_after_s:
                        with self._lock:
                            self._orphans[job.handle.job_id] = job.machine
                        self._end(job, None, f"connection lost: {job.machine.name}: slurmctld did not answer for "
                                             f"{job.machine.slurm.lost_after_s:g} s (its job {job.handle.job_id} is "
                                             "cancelled once it answers)")
                    continue
                job.silent_since = None
                state = states.get(job.handle.job_id)
                if state is None:
                    self._end(job, None, f"slurm job {job.handle.job_id} is no longer known to slurmctld")
                elif state[0] not in ACTIVE:
                    self._finish(job, *state)

    def _read(self, job: _Tracked) -> None:
        """New output of the job's file: whole lines to the controller (an overlong one cut, as other launchers)."""
        try:
            with open(job.handle.log_path, "rb") as f:
                f.seek(job.offset)
                data = f.read(8 << 20)
        except OSError:
            return  # not created yet (pending), or gone
        if not data:
            return
        job.offset += len(data)
        job.pending += data
        *lines, job.pending = job.pending.split(b"\n")
        for line in lines:
            if job.cut:
                job.cut = False
                continue
            job.events.put(LineEvent(job.handle.key, (line + b"\n").decode("utf-8", errors="replace")))
        if len(job.pending) > MAX_LINE_BYTES:
            if not job.cut:
                job.events.put(LineEvent(job.handle.key, job.pending[:MAX_LINE_BYTES].decode("utf-8", errors="replace")))
            job.cut, job.pending = True, b""

    def _finish(self, job: _Tracked, state: str, status: int, reason: str) -> None:
        self._read(job)
        node = job.machine.node
        if state == "COMPLETED":
            self._end(job, 0, None)
        elif state in NODE_LOST:
            self._end(job, None, f"connection lost: {job.machine.name}: slurm node {node}: job {job.handle.job_id} "
                                 f"ended {state} ({reason})")
        elif state == "CANCELLED":
            self._end(job, exit_status(status) if status else -15, None, note=f"slurm job {job.handle.job_id} cancelled")
        elif state == "PREEMPTED":
            self._end(job, None, f"slurm job {job.handle.job_id} was preempted ({reason})")
        else:  # FAILED, TIMEOUT, OUT_OF_MEMORY, DEADLINE, ...
            self._end(job, exit_status(status) if status else -9, None,
                      note=f"slurm job {job.handle.job_id} ended {state} ({reason})")

    def _end(self, job: _Tracked, returncode: int | None, error: str | None, note: str | None = None) -> None:
        with self._lock:
            if self._jobs.pop(job.handle.job_id, None) is None:
                return
        if job.pending and not job.cut:
            job.events.put(LineEvent(job.handle.key, job.pending.decode("utf-8", errors="replace")))
        if error or note:
            try:
                with open(job.handle.log_path, "a", encoding="utf-8") as f:
                    f.write(f"orch: {error or note}\n")
            except OSError:
                pass
        job.done.set()
        job.events.put(ExitEvent(job.handle.key, returncode, error))

    def close(self) -> None:
        """Stop following; jobs keep running (a new controller re-attaches to them)."""
        self._closed.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        with self._lock:
            self._jobs.clear()


__all__ = ["SlurmLauncher", "SlurmMachine", "SlurmSpec", "SlurmJob", "SlurmError", "job_name", "parse_fields",
           "gres_count", "exit_status"]
