"""The launcher contract: every launcher (tests/fleet/launcher_cases.py: local, ssh, ray, slurm and the dispatch
bench's fake fleet) passes the same tests, the way Optuna runs every storage through one suite. Each runs on real
infrastructure (processes, sshd, a Ray cluster, a Slurm cluster) on this machine.

What a launcher promises the controller: its jobs' lines arrive in order while they run and its exit status at
the end; argv, env and secrets reach the job unchanged (no shell, no secret in the recorded command); a cancel kills
the job and its children, and a job that ignores SIGTERM is killed after the grace (the controller's timeout);
a machine that goes away ends its trial as a connection loss; after a controller restart `reattach` follows a job
that outlived its controller (Capability.OUTLIVES_CONTROLLER) or leaves nothing of it running; a probe tells a
reachable machine from one that is not. Where a case cannot take part (the fake fleet runs no commands; the local
host cannot be lost without its controller) the test is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config.fleet import Capability
from orchestrator.jobs import JobSpec
from orchestrator.launchers.base import ExitEvent, JobRecord, LineEvent
from orchestrator.warm import REFUSED, WarmPlan
from orchestrator.warm.plan import ForkPlan, StagedFile
from tests.conftest import REPO, STAND_IN, wait_for
from tests.fleet.launcher_cases import CASES, FACTORIES, contract_ray_lab  # noqa: F401 - a fixture

STUB = Path(__file__).with_name("controller_stub.py")


@pytest.fixture(params=CASES)
def case(request, tmp_path):
    return FACTORIES[request.param](request, tmp_path)


@pytest.fixture
def launcher(case):
    made = case.make()
    yield made
    made.close()


def _job(trial: int, script: str, *args: str, env: dict | None = None, secret: dict | None = None) -> JobSpec:
    return JobSpec(study="contract", trial=trial, argv=["bash", "-c", script, "job", *args], env=env or {},
                   secret_env=secret or {}, timeout_s=120)


def _until_exit(events: queue.Queue, key: int, timeout_s: float) -> tuple[list[tuple[float, str]], ExitEvent, float]:
    """(lines with their arrival times, the exit event, its arrival time)."""
    lines, deadline = [], time.monotonic() + timeout_s
    while True:
        try:
            event = events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no exit within {timeout_s:g} s; lines so far: {[l for _, l in lines][-5:]}") from None
        if event.key != key:
            continue
        if isinstance(event, LineEvent):
            lines.append((time.monotonic(), event.line))
        elif isinstance(event, ExitEvent):
            return lines, event, time.monotonic()


def _until_line(events: queue.Queue, key: int, text: str, timeout_s: float) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout_s
    while True:
        event = events.get(timeout=max(0.01, deadline - time.monotonic()))
        assert not isinstance(event, ExitEvent), f"the job ended before printing {text!r}: {event}, lines {seen}"
        if isinstance(event, LineEvent) and event.key == key:
            seen.append(event.line.rstrip("\n"))
            if seen[-1] == text:
                return seen


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _pids(path: Path) -> list[int]:
    return [int(p) for p in wait_for(lambda: path.is_file() and path.read_text().split(), 10, f"{path}")]


def _needs_commands(case) -> None:
    if not case.runs_commands:
        pytest.skip(f"{case.name}: its jobs are timers, not commands (bench/fake_fleet.py)")


# ---- start, stream, exit ------------------------------------------------------------------------------------------
def test_lines_stream_in_order_while_the_job_runs_then_its_exit(case, launcher, tmp_path):
    if case.runs_commands:
        script = 'echo first; sleep 1; for i in $(seq 1 40); do echo "line $i"; done; printf "no newline at the end"'
        expected = ["first", *[f"line {i}" for i in range(1, 41)], "no newline at the end"]
    else:
        script, expected = "", None
    events: queue.Queue = queue.Queue()
    handle = launcher.start(_job(1, script), case.machine, case.slot, tmp_path / "t1", events)
    lines, exit_event, ended = _until_exit(events, 1, 60)
    assert (exit_event.returncode, exit_event.error) == (0, None)
    got = [line.rstrip("\n") for _, line in lines]
    assert ended - lines[0][0] > 0.4, "the first line arrived only with the job's end: not streamed"
    if expected is None:  # the fake fleet: its run's lines, the final outcome last
        assert len(got) >= 5 and '"event": "final"' in got[-1]
        return
    assert got == expected
    assert handle.log_path.read_text().splitlines()[:len(expected)] == expected  # the trial's log kept it all


def test_the_exit_status_is_the_jobs(case, launcher, tmp_path):
    _needs_commands(case)
    events: queue.Queue = queue.Queue()
    launcher.start(_job(2, "echo bye; exit 3"), case.machine, case.slot, tmp_path / "t2", events)
    lines, exit_event, _ = _until_exit(events, 2, 60)
    assert (exit_event.returncode, exit_event.error) == (3, None)
    assert [line.rstrip("\n") for _, line in lines] == ["bye"]


def test_argv_env_and_secrets_reach_the_job_unchanged(case, launcher, tmp_path):
    _needs_commands(case)
    events: queue.Queue = queue.Queue()
    words = ["a b", "$HOME", "it's", ";", "*", "--flag=1"]
    job = _job(3, 'printf "%s\\n" "$@"; echo "E=$E_VAR"; echo "S=$S_VAR"', *words, env={"E_VAR": "x y"},
               secret={"S_VAR": "hunter2"})
    handle = launcher.start(job, case.machine, case.slot, tmp_path / "t3", events)
    lines, exit_event, _ = _until_exit(events, 3, 60)
    assert exit_event.returncode == 0
    assert [line.rstrip("\n") for _, line in lines] == [*words, "E=x y", "S=hunter2"]
    assert "hunter2" not in json.dumps(handle.command)


# ---- kill, timeout ------------------------------------------------------------------------------------------------
def test_cancel_kills_the_job_and_its_children(case, launcher, tmp_path):
    events: queue.Queue = queue.Queue()
    script = 'sleep 300 & echo $$ $! > pids; echo ready; wait'
    handle = launcher.start(_job(4, script), case.machine, case.slot, tmp_path / "t4", events)
    if case.runs_commands:
        _until_line(events, 4, "ready", 60)
        pids = _pids(case.job_dir(handle) / "pids")
    else:
        pids = []
    started = time.monotonic()
    handle.cancel("test")
    _, exit_event, ended = _until_exit(events, 4, 30)
    assert ended - started < 15, f"the cancel took {ended - started:.1f} s"
    assert exit_event.returncode != 0
    wait_for(lambda: not any(_alive(p) for p in pids), 10, f"every process of the job ({pids}) to be gone")


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace(case, launcher, tmp_path):
    """The controller's timeout is a cancel; a job that traps TERM (its child inherits the ignored signal) still
    ends, by KILL after the launcher's grace.

    The shell waits 2 s after its child dies before it says "survived": a kill that sweeps a job's processes one by
    one (Slurm's proctrack/linuxproc, as on clusters without cgroups) may end the child a moment before the shell,
    and the shell may run one more line in that moment. A shell the kill missed lives past the 2 s and is caught."""
    events: queue.Queue = queue.Queue()
    script = "trap '' TERM; sleep 300 & echo $$ $! > pids; echo ready; wait; sleep 2; echo survived"
    handle = launcher.start(_job(5, script), case.machine, case.slot, tmp_path / "t5", events)
    if case.runs_commands:
        _until_line(events, 5, "ready", 60)
        pids = _pids(case.job_dir(handle) / "pids")
    else:
        pids = []
    started = time.monotonic()
    handle.cancel("timeout")
    lines, exit_event, ended = _until_exit(events, 5, 40)
    assert ended - started < 20, f"the kill took {ended - started:.1f} s"
    assert exit_event.returncode != 0 and "survived" not in "".join(line for _, line in lines)
    wait_for(lambda: not any(_alive(p) for p in pids), 10, f"every process of the job ({pids}) to be gone")


# ---- probe --------------------------------------------------------------------------------------------------------
def test_a_probe_tells_a_reachable_machine_from_one_that_is_not(case, launcher):
    info = launcher.probe(case.machine)
    assert info.reachable and info.error is None, info.error
    assert info.gpu_count > 0 or (info.cpu_count or 0) >= 1
    if case.unreachable is None:
        return
    started = time.monotonic()
    gone = launcher.probe(case.unreachable)
    assert not gone.reachable and gone.error and case.unreachable.name in gone.error
    assert time.monotonic() - started < 40


# ---- a controller restart -----------------------------------------------------------------------------------------
def test_after_a_controller_restart_the_job_is_followed_or_nothing_of_it_runs(case, tmp_path):
    """A stand-in controller (controller_stub.py) starts a job and is killed with SIGKILL; a new launcher is asked to
    re-attach from what the trial row recorded. A job that outlives its controller is followed to its end (the lines
    from before the restart too) and ran once; any other is gone."""
    workdir = tmp_path / "t6"
    script = "trap '' TERM; echo $$ > pids; echo run >> starts; echo early; echo ready; sleep 3; echo late; exit 4"
    spec = {**case.stub, "machine": case.machine.model_dump(mode="json"), "workdir": str(workdir),
            "study": "contract", "trial": 6, "argv": ["bash", "-c", script], "wait": case.runs_commands}
    stub = subprocess.Popen([sys.executable, str(STUB), json.dumps(spec)], cwd=tmp_path, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **case.env})
    try:
        recorded = json.loads(stub.stdout.readline() or "null") or pytest.fail(stub.stderr.read())
        assert stub.stdout.readline().strip() == "ready", stub.stderr.read()
        job_dir = Path(recorded["remote_dir"] or recorded["workdir"])
        pids = _pids(job_dir / "pids") if case.runs_commands else []
    finally:
        stub.send_signal(signal.SIGKILL)
        stub.wait(timeout=10)
    record = JobRecord(study="contract", trial=6, machine=case.machine.name, slot=case.slot.label,
                       workdir=workdir, log_path=Path(recorded["log_path"]), pid=recorded["pid"],
                       pid_start=recorded["pid_start"], job_ref=recorded["job_ref"], controller=recorded["controller"])
    launcher = case.make()
    try:
        events: queue.Queue = queue.Queue()
        handle = launcher.reattach(record, case.machine, events)
        if Capability.OUTLIVES_CONTROLLER in launcher.capabilities:
            assert handle is not None and handle.job_ref == record.job_ref
            lines, exit_event, _ = _until_exit(events, 6, 30)
            assert [line.rstrip("\n") for _, line in lines] == ["early", "ready", "late"]
            assert (exit_event.returncode, exit_event.error) == (4, None)
            assert (job_dir / "starts").read_text().split() == ["run"]  # ran once: followed, not started again
        else:
            assert handle is None
            wait_for(lambda: not any(_alive(p) for p in pids), 15, f"the job ({pids}) to be gone")
    finally:
        launcher.close()


# ---- warm machines (orchestrator/warm) ----------------------------------------------------------------------------
def test_a_second_trial_finds_the_first_trials_cache_and_the_data_is_staged_once(case, launcher, tmp_path,
                                                                                  monkeypatch):
    """The stand-in trainer keeps an entry in TORCHINDUCTOR_CACHE_DIR (as a compile cache does) and reads the study's
    data through the link in its trial directory. On the same machine the second trial finds the first one's entry,
    the data file was copied to the machine once, a changed script gets a fresh key, and a staged file whose bytes
    changed is refused with its name before the trainer starts. The controller's own environment holds a
    TORCHINDUCTOR_CACHE_DIR (torch sets one in a process that imported inductor): the warm cache replaces it."""
    _needs_commands(case)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inherited"))
    source = tmp_path / "shard.bin"
    source.write_bytes(os.urandom(300_000))
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    data = (StagedFile("shards/shard.bin", sha, source.stat().st_size, str(source)),)

    def trial(number: int, code: str, env: dict | None = None):
        job = JobSpec(study="contract", trial=number, argv=[sys.executable, str(STAND_IN), "--steps", "5",
                      "--cache-probe", "--read-data", "data/shards/shard.bin"], env=env or {}, timeout_s=120,
                      warm=WarmPlan(code=code, data=data))
        events: queue.Queue = queue.Queue()
        launcher.start(job, case.machine, case.slot, Path(case.machine.workdir) / "contract" / f"trial-{number:04d}",
                       events)
        lines, exit_event, _ = _until_exit(events, number, 90)
        text = [line.rstrip("\n") for _, line in lines]
        report = next(json.loads(line[len("@@warm "):]) for line in text if line.startswith("@@warm "))
        return text, exit_event, report

    def said(text: list[str], what: str) -> list[str]:
        return [line.split()[2:] for line in text if line.startswith(f"stand-in: {what} ")]

    text, exit_event, first = trial(1, "code-a")
    assert (exit_event.returncode, exit_event.error) == (0, None), text
    entry = said(text, "cache")[0]
    assert entry[0] == "created" and not first["found"] and first["data"][0]["state"] == "verified"
    assert said(text, "data") == [["data/shards/shard.bin", str(source.stat().st_size), sha]]
    staged = Path(first["root"]) / "data" / sha
    copied = staged.stat()
    assert Path(entry[1]).is_relative_to(Path(first["root"]) / "cache" / first["key"])

    text, exit_event, second = trial(2, "code-a")
    assert (exit_event.returncode, exit_event.error) == (0, None), text
    assert said(text, "cache") == [["found", entry[1]]] and second["key"] == first["key"] and second["found"]
    assert said(text, "data") == [["data/shards/shard.bin", str(source.stat().st_size), sha]]
    assert second["data"][0]["state"] == "checked"
    assert (staged.stat().st_ino, staged.stat().st_mtime_ns) == (copied.st_ino, copied.st_mtime_ns)  # copied once

    mine = Path(case.machine.workdir) / "declared-cache"  # a cache the study sets itself stays the study's
    mine.mkdir(parents=True, exist_ok=True)
    text, exit_event, declared = trial(4, "code-a", env={"TORCHINDUCTOR_CACHE_DIR": str(mine)})
    assert (exit_event.returncode, exit_event.error) == (0, None), text
    assert said(text, "cache")[0][0] == "created" and Path(said(text, "cache")[0][1]).parent == mine
    assert declared["kept"] == {"TORCHINDUCTOR_CACHE_DIR": str(mine)}

    blob = bytearray(staged.read_bytes())
    blob[:16] = bytes(b ^ 0xFF for b in blob[:16])  # the staged copy rots, same size
    staged.write_bytes(bytes(blob))
    text, exit_event, refused = trial(3, "code-b")  # and another training script
    assert refused["key"] != first["key"] and not refused["found"]  # another key: a cold cache of its own
    assert exit_event.returncode == REFUSED and not refused["ok"]
    assert exit_event.error.startswith("warm machine: staged data file") and str(staged) in exit_event.error
    assert "sha256" in exit_event.error and not said(text, "cache")  # the trainer never started


FORKED = """import os, signal, sys, time
for i in range(20):
    print("line", i, flush=True)
if sys.argv[1] == "wait":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(300)
sys.exit(int(sys.argv[1]))
"""


def test_a_trainer_forked_from_the_machines_fork_server_is_its_job(case, launcher, tmp_path):
    """With `trainer.fork_server` the entry program has the machine's fork server (orchestrator/warm/forkserver.py)
    fork the trainer: its lines still arrive in order, its exit status is the job's, the server outlives the job
    and forks the next trial's trainer, and a cancel of a trainer that ignores SIGTERM kills it after the grace,
    although it is the server's child, not the job's."""
    _needs_commands(case)
    script = tmp_path / "forked.py"
    script.write_text(FORKED)
    plan = WarmPlan(code="forked", fork=ForkPlan(preload=("json",), idle_s=60.0))
    servers = set()

    def start(number: int, arg: str):
        events: queue.Queue = queue.Queue()
        job = JobSpec(study="contract", trial=number, argv=[sys.executable, str(script), arg], env={}, timeout_s=120,
                      warm=plan)
        handle = launcher.start(job, case.machine, case.slot,
                                Path(case.machine.workdir) / "contract" / f"trial-{number:04d}", events)
        return handle, events

    def fork_of(lines: list[str]) -> dict:
        report = next(json.loads(line[len("@@warm "):]) for line in lines if line.startswith("@@warm "))
        servers.add(report["fork"].get("server_pid"))
        return report["fork"]

    try:
        _, events = start(11, "3")
        lines, exit_event, _ = _until_exit(events, 11, 90)
        text = [line.rstrip("\n") for _, line in lines]
        assert (exit_event.returncode, exit_event.error) == (3, None), text
        first = fork_of(text)
        assert first["state"] == "forked", text
        assert [line for line in text if not line.startswith("@@warm ")] == [f"line {i}" for i in range(20)]

        handle, events = start(12, "wait")
        seen = _until_line(events, 12, "ready", 90)
        fork = fork_of(seen)
        assert fork["state"] == "forked" and _alive(fork["pid"])
        # the server outlived the first trial's job (its own session) and forked this one too
        assert (fork["server_pid"], fork["spawned"], fork["forks"]) == (first["server_pid"], False, first["forks"] + 1)
        started = time.monotonic()
        handle.cancel("timeout")
        _, exit_event, ended = _until_exit(events, 12, 40)
        assert exit_event.returncode != 0 and ended - started < 20, f"the kill took {ended - started:.1f} s"
        wait_for(lambda: not _alive(fork["pid"]), 10, f"the forked trainer ({fork['pid']}) to be gone")
    finally:
        for pid in servers - {None}:  # the server outlives its jobs by design (until idle): end this test's
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


# ---- a machine that goes away (last: it breaks the case's machine) -------------------------------------------------
def test_a_machine_that_goes_away_ends_its_trial_as_a_connection_loss(case, launcher, tmp_path):
    if case.lose is None:
        pytest.skip(f"{case.name}: its machine cannot go away without its controller" if case.runs_commands
                    else f"{case.name}: its machines are simulated and never go away")
    events: queue.Queue = queue.Queue()
    launcher.start(_job(7, "echo ready; sleep 300"), case.machine, case.slot, tmp_path / "t7", events)
    _until_line(events, 7, "ready", 60)
    started = time.monotonic()
    case.lose()
    _, exit_event, ended = _until_exit(events, 7, case.lost_bound_s + 15)
    assert ended - started < case.lost_bound_s, f"noticed after {ended - started:.1f} s"
    assert exit_event.returncode is None and exit_event.error.startswith("connection lost")
    assert case.machine.name in exit_event.error
