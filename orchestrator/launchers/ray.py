"""Ray launcher: the fleet as a Ray cluster, one node per `launcher: ray` machine.

- The controller joins the cluster at the machines' `ray.address` as a driver (one cluster per process). A node
  belongs to machine NAME when it offers the custom resource `machine:NAME` (`orch fleet up` starts it so); its
  IP is the machine's `host`.
- A trial runs in a `ray_runner.JobRunner` actor placed on its machine: `num_gpus` = the slot's GPU count and
  `machine:NAME` = the slot's share of the machine (GPUs asked / GPUs of the node; 1 / cpu_slots on a CPU node),
  so a trial asking for all the machine's GPUs holds the whole machine. The job itself (bare or in a container,
  `containers.py`) runs under the ssh launcher's wrapper script: own process group, `job.log` in the trial
  directory on the node, killed when the runner's stdin closes (cancel, timeout, the runner or the controller
  dying). Job env and secrets reach the runner as a method argument, never an argv.
- Before an actor is submitted its request is checked against the live node's total resources: Ray leaves an
  impossible request pending silently; here it fails the trial's launch with the reason.
- The log streams back by polling the runner (`read`, a long poll of 1 s): lines go to the controller's queue and
  to the local `train.log` as they arrive. A runner that dies (its node died) or does not answer within
  `ray.dead_after_s` ends the trial with `ExitEvent(error="connection lost: ...")`: the controller marks the
  machine down and re-queues the trial elsewhere.
- Machine fields (`RayMachine`): the ssh ones (`orch fleet up` may start a node over SSH) and `ray:` (`RaySpec`,
  the cluster's address, required). A fleet's ray machines form one cluster (`RayMachine.check_fleet`).
- Jobs die with the controller's driver (the runner actor ends with it), so `reattach` returns None.
- `ray` itself is imported on first use (ray_common.py): loading a fleet file reads this module's models without it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable, ClassVar, Literal

from pydantic import model_validator

from .. import warm
from ..config.errors import OrchError
from ..config.fleet import Capability, Fleet, Machine
from ..config.validation import FIX_MARK
from ..config.yaml_source import YamlDoc
from ..gpu import gpu_query_argv, parse_nvidia_smi
from ..records import JobSpec
from . import ray_common, ray_runner
from .ray_common import (RayError, RayResourceError, RaySpec, _where, auth_env, connect,  # noqa: F401
                         machine_resource, node_of)
from .base import Event, ExitEvent, JobHandle, JobRecord, Launcher, LineEvent, MachineInfo, Slot, machine_info
from .containers import PodmanOptions, container_command, containerized_env, job_env, parse_image_id
from .remote_script import ScriptError, alive_check, bootstrap_command, job_script, remote_workdir, trial_directory
from .ssh import SshAccess


ray = ray_common.ray  # imported on first use (ray_common._LazyRay)


def _node_affinity(node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id, soft=False)


class RayMachine(SshAccess):
    """A `launcher: ray` machine: one node of the fleet's Ray cluster, whose IP is `host`."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.CLUSTER_UP_DOWN, Capability.RUN_COMMAND})
    launcher: Literal["ray"] = "ray"
    ray: RaySpec | None = None

    @model_validator(mode="after")
    def _address_needed(self) -> "RayMachine":
        if self.ray is None or not self.ray.address:
            raise ValueError(f"a ray machine needs the cluster's address{FIX_MARK}add `ray: {{address: HEAD_HOST:PORT}}` "
                             "(under `defaults:` for every machine)")
        return self

    @classmethod
    def check_fleet(cls, doc: YamlDoc, entries: list[tuple[int, Machine, dict]], defaults: dict) -> None:
        """The controller joins one Ray cluster: every ray machine names the same address, and no two share a node
        IP; and their identity files exist (SshAccess)."""
        super().check_fleet(doc, entries, defaults)
        first = entries[0][1]
        hosts: dict[str, str] = {}
        for index, machine, raw in entries:
            path = ("machines", index, "ray", "address") if "ray" in raw else ("defaults", "ray", "address")
            if machine.ray.address != first.ray.address:
                raise doc.error(path, f"ray machine {machine.name!r} names cluster {machine.ray.address} but "
                                f"{first.name!r} names {first.ray.address}",
                                fix="one fleet is one Ray cluster: set `ray: {address: ...}` once under `defaults:`")
            if machine.host in hosts:
                raise doc.error(("machines", index, "host"), f"ray machines {hosts[machine.host]!r} and {machine.name!r} "
                                f"are both node {machine.host}", fix="give each ray machine its own node IP as `host`")
            hosts[machine.host] = machine.name

START_TIMEOUT_S = float(os.environ.get("ORCH_RAY_START_TIMEOUT_S", "60"))
PROBE_TIMEOUT_S = 30.0
KILL_GRACE_S = 5.0
POLL_S = 1.0  # how long one read() waits on the node for output
SHARE_DIGITS = 4  # Ray's precision for fractional resources


def trial_request(machine: Machine, slot: Slot, node: dict, cpu_count: int | None = None) -> dict:
    """The actor options that pin a trial to its machine and take its share of it (`cpu_count`: the node's cores as
    its probe saw them, what the scheduler derived `cpu_slots: auto` from)."""
    total_gpus = node.get("Resources", {}).get("GPU", 0)
    if slot.gpu_ids:
        share = 1.0 if len(slot.gpu_ids) >= total_gpus else len(slot.gpu_ids) / total_gpus
    else:
        share = 1.0 / max(1, machine.resolved_cpu_slots(cpu_count or int(node.get("Resources", {}).get("CPU", 0)) or None))
    share = max(10 ** -SHARE_DIGITS, int(share * 10 ** SHARE_DIGITS) / 10 ** SHARE_DIGITS)
    return {"num_cpus": 0, "num_gpus": len(slot.gpu_ids), "resources": {machine_resource(machine): share}}


def check_feasible(machine: Machine, node: dict | None, request: dict) -> None:
    """Raise RayResourceError when the request exceeds what the machine's live node has at all."""
    if node is None:
        raise RayResourceError(f"{_where(machine)}: no live node of the cluster offers {machine_resource(machine)}, "
                               "so Ray would leave the trial pending forever (fix: `orch fleet up`, or start the "
                               f"node with --resources '{{\"{machine_resource(machine)}\": 1}}'; `orch fleet status`)")
    total = node.get("Resources", {})
    wanted = {"GPU": request["num_gpus"], "CPU": request["num_cpus"], **request["resources"]}
    short = [f"{name} {amount:g} (node has {total.get(name, 0):g})" for name, amount in wanted.items()
             if amount and total.get(name, 0) < amount]
    if short:
        raise RayResourceError(f"{_where(machine)}: the trial asks for {', '.join(short)}, which the node can never "
                               "provide, so Ray would leave it pending forever (fix: lower resources.gpus in the study, "
                               "or set the machine's `gpus:` to what its node has)")


# ---- jobs --------------------------------------------------------------------------------------------------------
class RayJob(JobHandle):
    def __init__(self, key: int, runner, machine: Machine, workdir: Path, log_path: Path, remote_dir: str,
                 command: list[str], image_id: str | None, kill_grace_s: float) -> None:
        self.key, self.runner, self.machine = key, runner, machine
        self.workdir, self.log_path, self.remote_dir, self.command = workdir, log_path, remote_dir, command
        self.container_image_id = image_id
        self.pid = None  # the job's pid is on the node (REMOTE_DIR/.orch-job.pid); local pid checks must not see it
        self.pid_start = None
        self.kill_grace_s = kill_grace_s
        self.done = threading.Event()
        self.cancel_reason: str | None = None

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        try:
            self.runner.cancel.remote()
        except Exception:  # noqa: BLE001 - the runner is gone: its job died with it
            pass

        def _backstop() -> None:  # the node never answered: end the runner, which kills the job's group
            if not self.done.wait(self.kill_grace_s + 15.0):
                _kill(self.runner)

        threading.Thread(target=_backstop, daemon=True, name=f"ray-cancel-{self.key}").start()


def _kill(runner) -> None:
    try:
        ray.kill(runner, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead, or the cluster is gone
        pass


def _pump(job: RayJob, log_file, events: "queue.Queue[Event]", dead_after_s: float) -> None:
    offset, pending = 0, b""
    returncode: int | None = None
    error: str | None = None
    last_answer = time.monotonic()
    try:
        while True:
            try:
                data, finished, status = ray.get(job.runner.read.remote(offset, POLL_S), timeout=dead_after_s)
            except ray.exceptions.ActorUnavailableError as exc:  # transient (network): retried up to the bound
                if time.monotonic() - last_answer > dead_after_s:
                    error = f"its node has been unreachable for {dead_after_s:g} s ({_first_line(exc)})"
                    break
                time.sleep(0.2)
                continue
            except ray.exceptions.GetTimeoutError:
                error = f"its node did not answer within {dead_after_s:g} s"
                break
            except ray.exceptions.RayActorError as exc:
                error = f"the trial's runner died: {_first_line(exc)}"
                break
            last_answer = time.monotonic()
            if data:
                offset += len(data)
                log_file.write(data)
                log_file.flush()
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    events.put(LineEvent(job.key, (line + b"\n").decode("utf-8", errors="replace")))
            if finished:
                returncode = status
                break
    except Exception as exc:  # noqa: BLE001 - the cluster connection itself failed
        error = f"{type(exc).__name__}: {_first_line(exc)}"
    finally:
        if pending:
            events.put(LineEvent(job.key, pending.decode("utf-8", errors="replace")))
        launcher_error = None
        if error is not None:
            launcher_error = f"connection lost: {job.machine.name}: ray node {job.machine.host}: {error}"
            if job.cancel_reason and "did not answer" not in error:
                launcher_error = f"cancelled ({job.cancel_reason}); the runner ended without an exit status"
            log_file.write(f"orch: {launcher_error}\n".encode())
        log_file.close()
        _kill(job.runner)  # frees its share of the machine now; a live job is killed with it
        job.done.set()
        events.put(ExitEvent(job.key, returncode, launcher_error))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    for words in ("node has died", "died", "unavailable"):  # Ray's messages put the cause on a later line
        for line in lines:
            if words in line.lower():
                return line
    return lines[0] if lines else type(exc).__name__


class RayLauncher(Launcher):
    name = "ray"
    machine_type = RayMachine

    def __init__(self, *, start_timeout_s: float = START_TIMEOUT_S, kill_grace_s: float = KILL_GRACE_S,
                 probe_timeout_s: float = PROBE_TIMEOUT_S, podman: PodmanOptions | None = None) -> None:
        self.start_timeout_s, self.kill_grace_s, self.probe_timeout_s = start_timeout_s, kill_grace_s, probe_timeout_s
        self.podman = podman or PodmanOptions.from_env()
        self._runner_class = None
        self._cores: dict[str, int] = {}  # per machine: usable cores its last probe found

    @classmethod
    def cluster_up(cls, fleet: Fleet, timeout_s: float, report: Callable[[str], None]) -> None:
        from .ray_cluster import fleet_up

        fleet_up(fleet, timeout_s=timeout_s,
                 report=lambda r: report(f"{r.machine}: {r.role} node {r.action} (pid {r.pid}, {r.where})"))
        report("every ray machine's node has joined the cluster")

    @classmethod
    def cluster_down(cls, fleet: Fleet, report: Callable[[str], None]) -> None:
        from .ray_cluster import fleet_down

        fleet_down(fleet, report=lambda r: report(f"{r.machine}: {r.role} node {r.action}"
                                                  + (f" (pid {r.pid})" if r.pid else "")))

    def _runner(self):
        if self._runner_class is None:
            self._runner_class = ray.remote(ray_runner.JobRunner)
        return self._runner_class

    # -- probe
    def probe(self, machine: Machine) -> MachineInfo:
        """Is the machine's node alive in the cluster; its cores and GPUs (nvidia-smi run on the node)."""
        try:
            connect(machine.ray)
            node = node_of(machine)
            if node is None:
                return MachineInfo(reachable=False, error=f"{_where(machine)}: no live node offers "
                                   f"{machine_resource(machine)} (fix: `orch fleet up`)")
            facts_task = ray.remote(ray_runner.node_facts).options(
                num_cpus=0, max_retries=0, scheduling_strategy=_node_affinity(node["NodeID"]))
            facts = ray.get(facts_task.remote(gpu_query_argv(machine.nvidia_smi), self.probe_timeout_s / 2),
                            timeout=self.probe_timeout_s)
        except ray.exceptions.GetTimeoutError:
            return MachineInfo(reachable=False, error=f"{_where(machine)}: the node did not answer a probe within "
                                                      f"{self.probe_timeout_s:g} s")
        except ray.exceptions.RayError as exc:
            return MachineInfo(reachable=False, error=f"{_where(machine)}: {_first_line(exc)}")
        except OrchError as exc:
            return MachineInfo(reachable=False, error=str(exc))
        self._cores[machine.name] = facts["cpus"]
        rows = parse_nvidia_smi(facts["nvidia_smi"])
        info = machine_info(machine, rows, cpu_count=facts["cpus"])
        node_gpus = int(node.get("Resources", {}).get("GPU", 0))
        if not rows and machine.gpus == "auto" and node_gpus:
            info.gpu_count = node_gpus  # GPUs Ray sees, without nvidia-smi on the node's PATH
        return info

    def run_command(self, machine: Machine, argv: list[str], timeout_s: float = 30.0) -> tuple[int, str]:
        """A task pinned to the machine's node (no resources held: it runs beside the node's trials)."""
        try:
            connect(machine.ray)
            node = node_of(machine)
            if node is None:
                raise RayError(f"{_where(machine)}: no live node offers {machine_resource(machine)} (fix: `orch fleet up`)")
            task = ray.remote(ray_runner.run_argv).options(
                num_cpus=0, max_retries=0, scheduling_strategy=_node_affinity(node["NodeID"]))
            return ray.get(task.remote(argv, timeout_s), timeout=timeout_s + 10)
        except ray.exceptions.GetTimeoutError:
            raise RayError(f"{_where(machine)}: the node did not answer within {timeout_s + 10:g} s") from None
        except ray.exceptions.RayError as exc:
            raise RayError(f"{_where(machine)}: {_first_line(exc)}") from None

    def stage(self, machine: Machine, root: str, items: list) -> None:
        """The items the node lacks (one command there), each written by tasks pinned to the node in chunks, checked
        against its digest while it is sent, then renamed into place."""
        from ..warm.stage import StageError, missing_argv, parse_missing, part_path, push_parts

        status, out = self.run_command(machine, missing_argv(root, items), timeout_s=60)
        if status != 0:
            raise RayError(f"{_where(machine)}: cannot read the staged files under {root}: {out.strip()[-300:]}")
        missing = parse_missing(out, items)
        if not missing:
            return
        node = node_of(machine)
        if node is None:
            raise RayError(f"{_where(machine)}: no live node offers {machine_resource(machine)} (fix: `orch fleet up`)")
        pinned = {"num_cpus": 0, "max_retries": 0, "scheduling_strategy": _node_affinity(node["NodeID"])}
        write = ray.remote(ray_runner.write_part).options(**pinned)
        finish = ray.remote(ray_runner.finish_part).options(**pinned)
        for item in missing:
            part, offset = part_path(root, item), 0
            try:
                for block in push_parts(item):
                    offset = ray.get(write.remote(part, block, offset), timeout=self.start_timeout_s)
            except StageError:
                ray.get(finish.remote(part, "", False), timeout=self.start_timeout_s)
                raise
            except ray.exceptions.RayError as exc:
                raise RayError(f"{_where(machine)}: cannot stage {item.what or item.dest}: {_first_line(exc)}") from None
            ray.get(finish.remote(part, f"{root}/{item.dest}", True), timeout=self.start_timeout_s)

    def job_alive(self, record: JobRecord, machine: Machine) -> bool:
        """The job's process group on the node (its pid file in the trial directory): the wrapper kills it when the
        runner actor ends with its controller's driver."""
        argv = alive_check(trial_directory(machine.workdir, record.study, record.trial))
        status, _ = self.run_command(machine, argv, timeout_s=self.probe_timeout_s)
        return status == 0

    # -- start
    def start(self, job: JobSpec, machine: Machine, slot: Slot, workdir: Path,
              events: "queue.Queue[Event]") -> RayJob:
        connect(machine.ray)
        node = node_of(machine)
        request = trial_request(machine, slot, node, self._cores.get(machine.name)) if node else {}
        check_feasible(machine, node, request)
        runner = self._runner().options(**request, max_restarts=0, max_task_retries=0, max_concurrency=4).remote()
        try:
            hello = ray.get(runner.hello.remote(), timeout=self.start_timeout_s)
            remote_dir = self.remote_trial_dir(hello["home"], machine, job)
            job = warm.prepare(self, job, machine, remote_dir)  # caches and data (orchestrator/warm): staged by tasks
            events = warm.watch(events, job)
            command, exports, image_id, cleanup = self._command(runner, machine, job, slot, remote_dir)
            script = job_script(command, exports, remote_dir, kill_grace_s=self.kill_grace_s, cleanup=cleanup)
            ray.get(runner.start.remote(bootstrap_command(script), script), timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            _kill(runner)
            raise RayError(f"{_where(machine)}: trial {job.trial} was not placed on the node within "
                           f"{self.start_timeout_s:g} s (fix: is another study using the machine? `orch fleet status`; "
                           "ORCH_RAY_START_TIMEOUT_S sets the wait)") from None
        except ray.exceptions.RayError as exc:
            _kill(runner)
            raise RayError(f"{_where(machine)}: cannot start trial {job.trial}: {_first_line(exc)}") from None
        except (OrchError, ScriptError) as exc:
            _kill(runner)
            raise RayError(f"{_where(machine)}: trial {job.trial}: {exc}") from None
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "train.log"
        handle = RayJob(job.trial, runner, machine, workdir, log_path, remote_dir, list(command), image_id,
                        self.kill_grace_s)
        threading.Thread(target=_pump, args=(handle, open(log_path, "ab"), events, machine.ray.dead_after_s),
                         daemon=True, name=f"ray-log-{machine.name}-{job.trial}").start()
        return handle

    @staticmethod
    def remote_trial_dir(home: str, machine: Machine, job: JobSpec) -> str:
        """`workdir/STUDY/trial-NNNN` on the node; a relative workdir (or `~/...`) is under the node's $HOME."""
        return f"{remote_workdir(machine.workdir, home)}/{job.study}/trial-{job.trial:04d}"

    def _command(self, runner, machine: Machine, job: JobSpec, slot: Slot, remote_dir: str):
        """(argv, exported env, image ID, container cleanup) of the job on the node: bare or in its container."""
        env = job_env(machine, job, slot)
        if machine.container.runtime == "none":
            return list(job.argv), {**env, **job.secret_env}, None, None
        cc = container_command(machine.container, job, slot, remote_dir, data_path=machine.data_path,
                               extra_env=containerized_env(machine, env, slot), podman=self.podman)
        status, out = ray.get(runner.run.remote(cc.inspect, 60.0), timeout=90)
        image_id = parse_image_id(out) if status == 0 else None
        if image_id is None:
            raise RayError(f"image {cc.image!r} is not on the node: {out.strip()[-300:]} (fix: pull, load or build "
                           "the image on the machine)")
        exports = dict(job.secret_env)
        if machine.container.runtime == "podman":
            exports["TMPDIR"] = self.podman.tmpdir
        return cc.argv, exports, image_id, cc.cleanup


__all__ = ["RayLauncher", "RayMachine", "RaySpec", "RayJob", "RayError", "RayResourceError", "connect", "node_of", "trial_request",
           "check_feasible", "machine_resource", "auth_env"]
