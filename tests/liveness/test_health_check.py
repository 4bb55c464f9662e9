"""The pre-flight health check (issue 18, item 3) on CPU, with real processes: the check program runs through the
launcher (local, and a real sshd machine) with the real torch, on a machine's CPU (`health_check.run: always`), and
after a trial failed on its slot; a machine whose nvidia-smi listing (the stand-in of tests/helpers: this machine has
no GPU) does not match the fleet file, or whose torch sees no GPU, is `sick`, gets no trials, and comes back when a
background check passes; the program's own bounds (the whole check, the all-reduce) are enforced. The GPU path
(CUDA matrix products, NCCL all-reduce) runs on the device machine: bench/health_check.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import yaml
from sqlalchemy import select

from db import Database, EventRow, MachineRow, TrialRow
from orchestrator.config.fleet import Machine
from orchestrator.run.controller import Controller
from orchestrator.config.fleet_file import load_fleet
from orchestrator.launchers.local import LocalLauncher
from orchestrator.liveness.health_check import PROGRAM, run_program
from orchestrator.study.lifecycle import create_study
from tests.conftest import orch, stand_in_study, wait_for

from .conftest import H100, cli, write_yaml


def _events(url: str, kind: str) -> list[EventRow]:
    with Database(url).session() as s:
        return s.scalars(select(EventRow).where(EventRow.kind == kind).order_by(EventRow.id)).all()


def test_the_cpu_check_runs_through_the_launcher_before_the_first_trial_and_after_a_failure(tmp_path):
    """`always` on a CPU machine: torch imported and a product checked there, through the local launcher, before the
    machine's first trial; a trial that crashes gets its slot checked again before the slot takes the retry."""
    fleet = write_yaml(tmp_path / "fleet.yaml", {"machines": [
        {"name": "checked", "launcher": "local", "gpus": "none", "cpu_slots": 1, "health_check": {"run": "always"}}]})
    path = stand_in_study(tmp_path, max_trials=3, parallel=1, extra_args=["--crash-once", str(tmp_path / "crashed")])
    spec = yaml.safe_load(path.read_text())
    spec["on_failure"] = {"crashed": "retry"}
    write_yaml(path, spec)
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert cli("study", "create", "s", "--from", str(path), "--db", url)[0] == 0
    result = orch("study", "run", "s", "--db", url, "--fleet", str(fleet), "--plain", cwd=tmp_path, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert "machine checked: pre-flight health check started (torch, a matrix product on the CPU)" in output
    assert "machine checked passed its health check in" in output and "1 device(s), matrix products right" in output
    assert "machine checked cpu:0: health check after the failure (crashed); the set takes no trial" in output
    assert "machine checked cpu:0 passed its health check" in output
    health = _events(url, "machine.health")
    assert [(e.machine, e.new, e.message.split(":")[0]) for e in health] == [
        ("checked", "passed", "1 device(s), matrix products right"), ("checked", "passed", "cpu")]
    rows = _rows(Database(url))
    assert [(r.state, r.exit_reason) for r in rows] == [("failed", "crashed"), ("complete", "completed"),
                                                        ("complete", "completed")]
    at = [e.at.replace(tzinfo=None) for e in health]
    assert at[0] <= rows[0].started_at.replace(tzinfo=None)  # the pre-flight check came first
    assert rows[0].ended_at.replace(tzinfo=None) <= at[1] <= rows[1].started_at.replace(tzinfo=None)


def test_the_cpu_check_runs_over_ssh(ssh_lab, tmp_path):
    machine = ssh_lab.machine("health-ssh")
    fleet = write_yaml(tmp_path / "fleet.yaml", {"machines": [
        machine.fleet_entry(tmp_path / "remote", health_check={"run": "always"})]})
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert cli("study", "create", "s", "--from", str(stand_in_study(tmp_path, max_trials=1, parallel=1)),
               "--db", url)[0] == 0
    result = orch("study", "run", "s", "--db", url, "--fleet", str(fleet), "--plain", cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "machine health-ssh passed its health check" in result.stdout
    (event,) = _events(url, "machine.health")
    assert (event.machine, event.new) == ("health-ssh", "passed")
    logs = list((tmp_path / "remote" / ".orch-health").glob("trial-*/job.log"))  # the program ran on the machine
    assert len(logs) == 1 and '"ok": true' in logs[0].read_text()


def test_a_machine_whose_gpus_do_not_match_the_fleet_file_is_sick_then_comes_back(tmp_path, monkeypatch, fake_smi):
    """nvidia-smi lists 1 of the 2 declared GPUs: sick, no trials, the reason in the database and the views; the GPU
    comes back (the stand-in lists 2): the background re-check passes and the machine takes trials again."""
    monkeypatch.chdir(tmp_path)
    fake_smi.set(gpus=[H100])
    fleet_file = write_yaml(tmp_path / "fleet.yaml", {"machines": [
        {"name": "g", "launcher": "local", "gpus": 2, "gpu_type": "H100", "nvidia_smi": str(fake_smi.path),
         "cpu_slots": 1, "health_check": {"run": "never"}},
        {"name": "ok", "launcher": "local", "gpus": "none", "cpu_slots": 1}]})
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    db = Database(url)
    create_study(db, "s", stand_in_study(tmp_path, max_trials=8, parallel=2, dispatch="continuous",
                                         extra_args=["--wall-s", "0.4"]))
    messages: list[str] = []
    controller = Controller(db, "s", load_fleet(fleet_file), reporter=lambda p, m: messages.append(m) if m else None,
                            heartbeat_s=0.2, health_check_s=0.2)
    thread = threading.Thread(target=controller.run)
    thread.start()
    try:
        wait_for(lambda: any("g failed its health check and is sick" in m for m in messages), 30, "g sick")
        wait_for(lambda: sum(r.state == "complete" for r in _rows(db)) >= 2, 30, "two trials on ok")
        with db.session() as s:
            row = s.scalar(select(MachineRow).where(MachineRow.name == "g"))
            assert row.state == "sick" and "nvidia-smi lists 1 GPU(s), the fleet file says gpus: 2" in row.note
        assert {r.machine for r in _rows(db)} == {"ok"}
        status = json.loads(cli("study", "status", "s", "--db", url, "--json")[1])
        assert ("g", "sick") in [(r["machine"], r["kind"]) for r in status["refused_machines"]]
        view = json.loads(cli("fleet", "status", "--fleet", str(fleet_file), "--db", url, "--json")[1])
        g = next(m for m in view["machines"] if m["name"] == "g")
        assert g["state"] == "sick" and g["refusals"][0]["kind"] == "sick" and "gpus: 2" in g["refusals"][0]["reason"]
        fake_smi.set(gpus=[H100, H100])  # the GPU is back
    finally:
        thread.join(timeout=120)
    assert not thread.is_alive()
    rows = _rows(db)
    assert [r.state for r in rows] == ["complete"] * 8 and "g" in {r.machine for r in rows}
    back = next(e for e in _events(url, "machine.state") if e.machine == "g" and e.new == "idle")
    assert all(r.started_at.replace(tzinfo=None) >= back.at.replace(tzinfo=None) for r in rows if r.machine == "g")
    assert [(e.new, e.old) for e in _events(url, "machine.accepted") if e.machine == "g"] == [(None, "sick")]


def _rows(db: Database) -> list[TrialRow]:
    with db.session() as s:
        return s.scalars(select(TrialRow).order_by(TrialRow.number)).all()


def test_gpus_that_torch_cannot_see_make_the_machine_sick_and_the_run_says_why(tmp_path, fake_smi):
    """nvidia-smi lists two H100s but CUDA does not start (here: there is no GPU at all), as with a broken driver:
    the check program, run through the launcher, finds it; with no other machine the run stops before any trial."""
    fleet = write_yaml(tmp_path / "fleet.yaml", {"machines": [
        {"name": "g", "launcher": "local", "gpus": 2, "gpu_type": "H100", "nvidia_smi": str(fake_smi.path)}]})
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    path = stand_in_study(tmp_path, max_trials=2, parallel=2)
    spec = yaml.safe_load(path.read_text())
    spec["resources"] = {"gpus": 2}
    assert cli("study", "create", "s", "--from", str(write_yaml(path, spec)), "--db", url)[0] == 0
    result = orch("study", "run", "s", "--db", url, "--fleet", str(fleet), "--plain", cwd=tmp_path, timeout=180)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert "machine g: pre-flight health check started (GPUs, a matrix product on each, an all-reduce)" in result.stdout
    assert "no machine of the fleet can take a trial now (sick: g)" in result.stderr
    assert "machine g gets no trials (sick): torch sees no GPU (torch.cuda.is_available() is False" in result.stderr
    assert "fix: repair the machine" in result.stderr
    assert _rows(Database(url)) == []
    plain = cli("study", "status", "s", "--db", url)[1]
    assert "refused: machine g (sick): torch sees no GPU" in plain


def _machine(**health) -> Machine:
    return Machine(name="m", launcher="local", gpus="none", workdir="runs", health_check={"run": "always", **health})


def test_the_check_is_bounded_and_a_missing_interpreter_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    slow = run_program(LocalLauncher(), _machine(timeout_s=0.5, allreduce_timeout_s=0.1), (), allreduce=False)
    assert not slow.ok and "did not finish within health_check.timeout_s = 0.5 s" in slow.reason
    assert slow.seconds < 0.5 + 25  # cancelled at the bound (TERM, KILL after the grace)
    missing = run_program(LocalLauncher(), _machine(python="/nonexistent/python3"), (), allreduce=False)
    assert not missing.ok and "the health check could not start" in missing.reason and "/nonexistent" in missing.reason
    assert "health_check.python" in missing.fix


@pytest.mark.parametrize("timeout_s, ok", [(120.0, True), (0.3, False)])
def test_the_all_reduce_must_finish_within_its_bound(timeout_s, ok):
    """The program's all-reduce path on CPU (gloo, 2 rank processes): right sum and figures, or the bound's message
    when rank start, process group set-up and the all-reduce do not fit in it."""
    result = subprocess.run([sys.executable, "-c", PROGRAM.read_text(), "--device", "cpu", "--size", "128",
                             "--allreduce", "--world", "2", "--allreduce-timeout", str(timeout_s),
                             "--allreduce-numel", "4096"], capture_output=True, text=True, timeout=180)
    report = json.loads(result.stdout.strip().splitlines()[-1].removeprefix("@@health "))
    assert report["ok"] is ok and (result.returncode == 0) is ok, result.stdout + result.stderr
    assert report["allreduce"]["world"] == 2 and report["allreduce"]["backend"] == "gloo"
    if ok:
        assert report["allreduce"]["op_ms"] > 0
    else:
        assert report["problems"] == [f"the gloo all-reduce over 2 devices did not finish within {timeout_s:g} s "
                                      "(process start, process group initialisation and the all-reduce)"]
