"""The ssh launcher against real sshd machines on loopback addresses (tests/fleet/conftest.py)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db import Database, MachineRow, MetricPointRow, TrialRow
from orchestrator.config.fleet import Machine
from orchestrator.config.fleet_file import load_fleet
from orchestrator.run.controller import Controller
from orchestrator.jobs import JobSpec
from orchestrator.launchers.base import ExitEvent, LineEvent, Slot
from orchestrator.launchers.ssh import ChangedHostKey, SshLauncher, UnknownHostKey
from orchestrator.study.lifecycle import create_study
from tests.conftest import group_alive, orch, stand_in_study
from tests.orch._checks import assert_agrees_with_optuna

KEEPALIVE_S, DEAD_AFTER_S = 0.5, 2.0


def _launcher(**kwargs) -> SshLauncher:
    return SshLauncher(keepalive_s=KEEPALIVE_S, dead_after_s=DEAD_AFTER_S, **kwargs)


def _fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def _fleet_file(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"machines": entries}, sort_keys=False))
    return path


def _machine(m, workdir: Path, **extra) -> Machine:
    return Machine(**m.fleet_entry(workdir, **extra))


def _wait_exit(events: queue.Queue, key: int, timeout: float = 30) -> tuple[list[str], ExitEvent]:
    lines, deadline = [], time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(event, LineEvent) and event.key == key:
            lines.append(event.line)
        elif isinstance(event, ExitEvent) and event.key == key:
            return lines, event


def _remote_pgid(handle) -> int:
    deadline = time.monotonic() + 10
    path = Path(handle.remote_dir) / ".orch-job.pid"
    while not path.is_file() or not path.read_text().strip():
        assert time.monotonic() < deadline, "the remote job never started"
        time.sleep(0.05)
    return int(path.read_text())


# ---- a study over SSH ------------------------------------------------------------------------------------------
def test_study_runs_over_ssh_on_three_machines(ssh_machines, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fleet = load_fleet(_fleet_file(tmp_path, [m.fleet_entry(tmp_path / "remote") for m in ssh_machines]))
    db = Database(f"sqlite:///{tmp_path / 'orch.db'}")
    create_study(db, "s", stand_in_study(tmp_path, max_trials=6, parallel=3))
    launcher = _launcher()
    try:
        progress = Controller(db, "s", fleet, launchers={"ssh": launcher}, heartbeat_s=0.5).run()
    finally:
        launcher.close()
    assert progress.done == 6
    with db.session() as s:
        rows = s.scalars(select(TrialRow).order_by(TrialRow.number)).all()
        assert [r.state for r in rows] == ["complete"] * 6
        assert {r.machine for r in rows} == {"m0", "m1", "m2"}
        for row in rows:
            points = s.scalars(select(MetricPointRow).where(MetricPointRow.trial_id == row.id,
                                                            MetricPointRow.kind == "val")).all()
            assert sorted(p.step for p in points) == [25, 50, 75, 100]
            assert Path(row.log_path).is_file() and str(tmp_path) in row.log_path  # the local copy
            remote_log = tmp_path / "remote" / "s" / f"trial-{row.number:04d}" / "job.log"
            assert remote_log.read_text() == Path(row.log_path).read_text()  # the copy kept on the machine
            assert row.command[-2:] == ["--seed", str(row.number)] and row.container_image_id is None


def test_probe_reports_no_gpu_and_unreachable(ssh_lab, ssh_machines, tmp_path):
    launcher = _launcher()
    info = launcher.probe(_machine(ssh_machines[0], tmp_path, gpus="auto"))
    assert info.reachable and info.gpu_count == 0 and info.gpus == [] and info.error is None
    down = ssh_lab.machine("down", start=False)
    info = launcher.probe(_machine(down, tmp_path))
    assert not info.reachable and "down" in info.error and "cannot connect" in info.error
    launcher.close()


def test_one_connection_per_machine_is_reused(ssh_machines, tmp_path):
    launcher = _launcher()
    machine = _machine(ssh_machines[1], tmp_path)
    conns = set()

    def _use():
        conns.add(id(launcher.connection(machine)))

    threads = [threading.Thread(target=_use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    launcher.probe(machine)
    assert len(conns) == 1 and id(launcher.connection(machine)) in conns
    launcher.close()


# ---- host keys -------------------------------------------------------------------------------------------------
def test_unknown_host_key_is_refused(ssh_lab, tmp_path):
    m = ssh_lab.machine("stranger", trusted=False)
    m.known_hosts.write_text("")
    fp = _fingerprint(m.host_key.with_suffix(".pub"))
    launcher = _launcher()
    with pytest.raises(UnknownHostKey) as err:
        launcher.start(JobSpec("s", 0, ["true"], {}), _machine(m, tmp_path), Slot("stranger", 0), tmp_path / "t", queue.Queue())
    message = str(err.value)
    assert "'stranger'" in message and fp in message and "orch fleet trust stranger" in message
    info = launcher.probe(_machine(m, tmp_path))
    assert not info.reachable and fp in info.error
    m.known_hosts.unlink()  # no file at all: the same refusal
    with pytest.raises(UnknownHostKey, match="orch fleet trust stranger"):
        launcher.connection(_machine(m, tmp_path))
    assert not list(tmp_path.glob("t/*"))  # nothing ran


def test_changed_host_key_is_refused(ssh_lab, tmp_path):
    m = ssh_lab.machine("changed", trusted=False)
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    m.known_hosts.write_text(f"[{m.host}]:{m.port} ssh-ed25519 {other.with_suffix('.pub').read_text().split()[1]}\n")
    launcher = _launcher()
    with pytest.raises(ChangedHostKey) as err:
        launcher.connection(_machine(m, tmp_path))
    message = str(err.value)
    assert "HOST KEY CHANGED" in message and "'changed'" in message
    assert _fingerprint(m.host_key.with_suffix(".pub")) in message and _fingerprint(other.with_suffix(".pub")) in message
    assert "orch fleet trust changed --replace" in message


def test_orch_fleet_trust_records_the_key(ssh_lab, tmp_path):
    m = ssh_lab.machine("newbox", trusted=False)
    fleet = _fleet_file(tmp_path, [m.fleet_entry(tmp_path / "remote")])
    fp = _fingerprint(m.host_key.with_suffix(".pub"))
    result = orch("fleet", "trust", "newbox", "--fleet", str(fleet), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert fp in result.stdout and "added" in result.stdout
    assert m.public_host_key() in m.known_hosts.read_text()
    assert _launcher().probe(_machine(m, tmp_path)).reachable
    again = orch("fleet", "trust", "newbox", "--fleet", str(fleet), cwd=tmp_path)
    assert again.returncode == 0 and "already trusted" in again.stdout
    # the machine is reinstalled: a new host key is refused until --replace
    m.stop()
    m.host_key.unlink()
    m.host_key.with_suffix(".pub").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(m.host_key)], check=True)
    m.start()
    new_fp = _fingerprint(m.host_key.with_suffix(".pub"))
    refused = orch("fleet", "trust", "newbox", "--fleet", str(fleet), cwd=tmp_path)
    assert refused.returncode != 0 and new_fp in refused.stderr and "--replace" in refused.stderr
    wrong = orch("fleet", "trust", "newbox", "--fleet", str(fleet), "--replace", "--expect", fp, cwd=tmp_path)
    assert wrong.returncode != 0 and "does not match" in wrong.stderr
    replaced = orch("fleet", "trust", "newbox", "--fleet", str(fleet), "--replace", "--expect", new_fp, cwd=tmp_path)
    assert replaced.returncode == 0 and "replaced" in replaced.stdout, replaced.stderr
    assert m.known_hosts.read_text().count(m.host) == 1
    assert _launcher().probe(_machine(m, tmp_path)).reachable
    missing = orch("fleet", "trust", "nosuch", "--fleet", str(fleet), cwd=tmp_path)
    assert missing.returncode != 0 and "newbox" in missing.stderr


# ---- jobs ------------------------------------------------------------------------------------------------------
NASTY = ["$(touch {marker})", "; touch {marker}; echo", "`touch {marker}`", "a'b\"c\\d", "line1\nline2 $HOME",
         "  spaced  ", "*", "-x", "", "%s %n {{}}"]


def test_shell_metacharacters_reach_the_job_as_data(ssh_machines, tmp_path):
    marker = tmp_path / "pwned"
    values = [v.format(marker=marker) for v in NASTY]
    launcher = _launcher()
    printer = "import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'env': os.environ.get('NASTY'), " \
              "'secret': os.environ.get('TOKEN'), 'gpu': os.environ.get('CUDA_VISIBLE_DEVICES')}))"
    job = JobSpec("s", 7, [sys.executable, "-c", printer, *values], {"NASTY": values[0] + values[3] + values[4]},
                  secret_env={"TOKEN": "s3cr3t'$(touch " + str(marker) + ")"})
    events: queue.Queue = queue.Queue()
    handle = launcher.start(job, _machine(ssh_machines[0], tmp_path / "remote"), Slot("m0", 0, gpu_ids=(2, 3)),
                            tmp_path / "local", events)
    lines, exit_event = _wait_exit(events, 7)
    launcher.close()
    assert exit_event.returncode == 0 and exit_event.error is None
    got = json.loads(lines[0])
    assert got["argv"] == values and got["env"] == job.env["NASTY"] and got["secret"] == job.secret_env["TOKEN"]
    assert got["gpu"] == "2,3"
    assert not marker.exists()
    assert "s3cr3t" not in json.dumps(handle.command)


def test_cancel_kills_the_remote_process_group_even_if_it_ignores_term(ssh_machines, tmp_path):
    launcher = _launcher(kill_grace_s=1.0)
    script = "trap '' TERM; sleep 300 & echo started; wait"
    events: queue.Queue = queue.Queue()
    handle = launcher.start(JobSpec("s", 3, ["bash", "-c", script], {}), _machine(ssh_machines[2], tmp_path / "remote"),
                            Slot("m2", 0), tmp_path / "local", events)
    assert events.get(timeout=10).line == "started\n"
    pgid = _remote_pgid(handle)
    assert group_alive(pgid)
    started = time.monotonic()
    handle.cancel("test")
    _, exit_event = _wait_exit(events, 3)
    assert time.monotonic() - started < 8
    assert exit_event.returncode == 128 + signal.SIGKILL and exit_event.error is None
    deadline = time.monotonic() + 5
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(pgid)  # `sleep 300` (TERM-ignoring, in the job's group) is gone too
    launcher.close()


def test_sshd_killed_mid_trial_marks_the_machine_down_within_the_heartbeat(ssh_lab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = ssh_lab.machine("fragile")
    fleet = load_fleet(_fleet_file(tmp_path, [m.fleet_entry(tmp_path / "remote")]))
    db = Database(f"sqlite:///{tmp_path / 'orch.db'}")
    create_study(db, "s", stand_in_study(tmp_path, max_trials=1, parallel=1, retries=0, extra_args=["--wall-s", "60", "--val-every", "1"]))
    launcher = _launcher()
    controller = Controller(db, "s", fleet, launchers={"ssh": launcher}, heartbeat_s=0.5)
    ended: list[BaseException] = []

    def _run() -> None:
        try:
            controller.run()
        except BaseException as exc:  # the fleet's only machine is down: the controller stops with NoCapacity
            ended.append(exc)

    thread = threading.Thread(target=_run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while True:  # wait for a metric line from the machine
        with db.session() as s:
            if s.scalar(select(MetricPointRow.id).limit(1)) is not None:
                break
        assert time.monotonic() < deadline, "the trial never reported"
        time.sleep(0.1)
    with db.session() as s:
        workdir = Path(s.scalar(select(TrialRow.workdir)))
    pgid = int((tmp_path / "remote" / "s" / workdir.name / ".orch-job.pid").read_text())
    killed = time.monotonic()
    m.kill()
    thread.join(timeout=KEEPALIVE_S + DEAD_AFTER_S + 10)
    assert not thread.is_alive()
    noticed = time.monotonic() - killed
    assert noticed < KEEPALIVE_S + DEAD_AFTER_S + 2  # the controller's heartbeat is 0.5 s
    with db.session() as s:
        row = s.scalar(select(TrialRow))
        machine = s.scalar(select(MachineRow).where(MachineRow.name == "fragile"))
    # the trial is lost to the machine (re-queued when retries remain), the machine is marked down, and with no
    # other machine left the controller stops with a clear message instead of waiting forever
    assert row.state == "lost" and row.exit_reason == "machine_lost"
    assert "connection lost" in (row.note or "") and "fragile" in row.note
    assert machine.state == "down"
    assert len(ended) == 1 and "no machine of the fleet can take a trial now (down or draining: fragile)" in str(ended[0])
    deadline = time.monotonic() + 5
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(pgid)  # the job died with its connection
    launcher.close()


def test_a_silent_connection_is_noticed_by_the_keepalive(ssh_lab, tmp_path):
    """The machine stops answering without closing TCP (SIGSTOP on its sshd: like a network partition)."""
    m = ssh_lab.machine("frozen")
    launcher = _launcher()
    events: queue.Queue = queue.Queue()
    handle = launcher.start(JobSpec("s", 4, ["bash", "-c", "echo up; sleep 300"], {}), _machine(m, tmp_path / "remote"),
                            Slot("frozen", 0), tmp_path / "local", events)
    assert events.get(timeout=10).line == "up\n"
    pgid = _remote_pgid(handle)
    stopped = [p for p in m.sessions() if Path(f"/proc/{p}/comm").read_text().strip() == "sshd"]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    began = time.monotonic()
    try:
        _, exit_event = _wait_exit(events, 4, timeout=KEEPALIVE_S + DEAD_AFTER_S + 5)
        assert time.monotonic() - began <= KEEPALIVE_S + DEAD_AFTER_S + 1
        assert exit_event.returncode is None and exit_event.error.startswith("connection lost: frozen")
        assert "keepalive" in exit_event.error
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    m.kill()  # the session ends: the job's stdin closes and its group is killed
    deadline = time.monotonic() + 5
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(pgid)
    launcher.close()


def test_a_trial_lost_with_its_machine_is_rerun_elsewhere(ssh_lab, tmp_path, monkeypatch):
    """Two machines; one's sshd dies mid-trial: that trial is re-queued and completes on the other machine."""
    monkeypatch.chdir(tmp_path)
    doomed, spare = ssh_lab.machine("doomed"), ssh_lab.machine("spare")
    fleet = load_fleet(_fleet_file(tmp_path, [doomed.fleet_entry(tmp_path / "r1"), spare.fleet_entry(tmp_path / "r2")]))
    db = Database(f"sqlite:///{tmp_path / 'orch.db'}")
    create_study(db, "s", stand_in_study(tmp_path, max_trials=2, parallel=2, retries=1,
                                         extra_args=["--wall-s", "4", "--val-every", "1"]))
    controller = Controller(db, "s", fleet, launchers={"ssh": _launcher()}, heartbeat_s=0.5)
    thread = threading.Thread(target=controller.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while True:  # both trials report from their machines
        with db.session() as s:
            reporting = s.scalars(select(TrialRow.machine).join(MetricPointRow, MetricPointRow.trial_id == TrialRow.id)
                                  .distinct()).all()
        if set(reporting) == {"doomed", "spare"}:
            break
        assert time.monotonic() < deadline, "the trials never reported"
        time.sleep(0.1)
    doomed.kill()
    thread.join(timeout=60)
    assert not thread.is_alive()
    rows = assert_agrees_with_optuna(db, "s")
    lost = [r for r in rows if r.state == "lost"]
    assert len(lost) == 1 and lost[0].machine == "doomed" and lost[0].exit_reason == "machine_lost"
    retry = next(r for r in rows if r.retry_of == lost[0].number)
    assert retry.state == "complete" and retry.machine == "spare" and retry.params == lost[0].params
    assert sorted(r.state for r in rows) == ["complete", "complete", "lost"]
