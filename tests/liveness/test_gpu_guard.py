"""Busy-GPU refusal (issue 18, item 3): a GPU set that a process this study did not start holds gets no trial, and
the machine's state says why. The GPUs are read through the nvidia-smi reader seam (the fleet's `nvidia_smi:`): a
stand-in executable the test controls lists a real process (`sleep`) as holding a GPU for as long as it lives (this
machine has no GPU: the stand-in is the only mock). Through `orch study run`, over the local launcher and over a
real sshd machine; `orch study status` and `orch fleet status` (plain and --json) show the refusal."""

from __future__ import annotations

import json

import yaml
from sqlalchemy import select

from db import Database, EventRow, TrialRow
from tests.conftest import orch, stand_in_study

from .conftest import cli, write_yaml


def _study(tmp_path, max_trials=3):
    path = stand_in_study(tmp_path, max_trials=max_trials, parallel=2, dispatch="continuous",
                          extra_args=["--wall-s", "0.3"])
    spec = yaml.safe_load(path.read_text())
    spec["resources"] = {"gpus": 1}
    return write_yaml(path, spec)


def _gpu_machine(fake_smi, **entry) -> dict:
    """Two declared GPUs read through the stand-in; the torch check is off (no CUDA here: it would fail)."""
    return {"name": "g", "launcher": "local", "gpus": 2, "gpu_type": "H100", "nvidia_smi": str(fake_smi.path),
            "health_check": {"run": "never"}, **entry}


def _check_run_avoids_the_held_gpu(tmp_path, fleet, fake_smi, machine: str) -> None:
    holder = fake_smi.hold(gpu=1)
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert cli("study", "create", "s", "--from", str(_study(tmp_path)), "--db", url)[0] == 0
    result = orch("study", "run", "s", "--db", url, "--fleet", str(fleet), "--plain", cwd=tmp_path, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in output, output[-3000:]
    db = Database(url)
    with db.session() as s:
        rows = s.scalars(select(TrialRow).order_by(TrialRow.number)).all()
        refused = s.scalars(select(EventRow).where(EventRow.kind == "machine.refused")).all()
    assert [r.state for r in rows] == ["complete"] * 3
    assert {r.slot for r in rows} == {"gpu:0"}  # never the held GPU, although two trials were wanted at once
    line = f"machine {machine} gets no trials (gpus_busy): GPU set(s) gpu:1 held by processes this study did not " \
           f"start: pid {holder.pid} (python, 2048 MiB) on gpu1 (fix: stop those processes"
    assert line in output
    assert [(e.machine, e.new) for e in refused] == [(machine, "gpus_busy")] and str(holder.pid) in refused[0].message
    status = json.loads(cli("study", "status", "s", "--db", url, "--json")[1])
    assert [(r["machine"], r["kind"]) for r in status["refused_machines"]] == [(machine, "gpus_busy")]
    assert f"refused: machine {machine} (gpus_busy)" in cli("study", "status", "s", "--db", url)[1]
    fleet_view = json.loads(cli("fleet", "status", "--fleet", str(fleet), "--db", url, "--json")[1])
    (view,) = fleet_view["machines"]
    assert view["state"] == "gpus_busy"
    assert view["gpu_processes"] == [{"gpu": 1, "pid": holder.pid, "name": "python", "used_mib": 2048.0,
                                      "foreign": True}]
    assert [r["kind"] for r in view["refusals"]] == ["gpus_busy"] and "fix" in view["refusals"][0]
    plain = cli("fleet", "status", "--fleet", str(fleet), "--db", url)[1]
    assert f"{machine} gets no trials (gpus_busy)" in plain and f"pid {holder.pid}" in plain
    fake_smi.release(holder)  # the process ends: nvidia-smi lists nothing, the machine is idle again
    after = json.loads(cli("fleet", "status", "--fleet", str(fleet), "--db", url, "--json")[1])
    assert after["machines"][0]["state"] == "idle" and after["machines"][0]["refusals"] == []


def test_a_gpu_held_by_a_foreign_process_gets_no_trial_local(tmp_path, fake_smi):
    fleet = write_yaml(tmp_path / "fleet.yaml", {"machines": [_gpu_machine(fake_smi)]})
    _check_run_avoids_the_held_gpu(tmp_path, fleet, fake_smi, "g")


def test_a_gpu_held_by_a_foreign_process_gets_no_trial_ssh(ssh_lab, tmp_path, fake_smi):
    machine = ssh_lab.machine("guard-ssh")
    entry = machine.fleet_entry(tmp_path / "remote", gpus=2, gpu_type="H100", nvidia_smi=str(fake_smi.path),
                                health_check={"run": "never"})
    fleet = write_yaml(tmp_path / "fleet.yaml", {"machines": [entry]})
    _check_run_avoids_the_held_gpu(tmp_path, fleet, fake_smi, "guard-ssh")


def test_every_gpu_busy_stops_the_run_before_anything_starts_and_it_resumes_when_they_are_free(tmp_path, fake_smi):
    holders = [fake_smi.hold(gpu=0, name="someone_else.py"), fake_smi.hold(gpu=1, name="someone_else.py")]
    fleet = write_yaml(tmp_path / "fleet.yaml", {"machines": [_gpu_machine(fake_smi)]})
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert cli("study", "create", "s", "--from", str(_study(tmp_path, 2)), "--db", url)[0] == 0
    result = orch("study", "run", "s", "--db", url, "--fleet", str(fleet), "--plain", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert "no machine of the fleet can take a trial now (gpus busy: g)" in result.stderr
    assert all(f"pid {h.pid} (someone_else.py, 2048 MiB)" in result.stderr for h in holders)
    assert "fix: stop those processes or wait for them to end" in result.stderr
    with Database(url).session() as s:
        assert s.scalars(select(TrialRow)).all() == []  # nothing was started, nothing recorded as a trial
    for holder in holders:
        fake_smi.release(holder)
    resumed = orch("study", "run", "s", "--db", url, "--fleet", str(fleet), "--plain", cwd=tmp_path, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "machine g takes trials again (no longer gpus_busy)" not in resumed.stdout  # a new run: nothing to clear
    with Database(url).session() as s:
        assert [r.state for r in s.scalars(select(TrialRow))] == ["complete", "complete"]
