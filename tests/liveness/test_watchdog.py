"""The progress watchdog (issue 18, item 3), with real processes: a trainer that stops printing (the stand-in's
`--stall-once`: the first run to start prints one last line with its wall time, then nothing, forever) is killed
`stall_s` after its last line, recorded `lost` with exit reason `hung` (not `crashed`), and re-run as a recorded
retry on the other machine; a trainer that prints now and then runs longer than `stall_s` untouched. Over the local
launcher and over real sshd machines (tests/fleet/conftest.py), through `orch study run` as a user runs it.

Each run records the detection time (the stall event's time minus the wall time the trainer printed last) into the
reliability figures (fault 8, docs/reliability.md)."""

from __future__ import annotations

import re
import time
from datetime import timezone

import pytest
import yaml
from sqlalchemy import select

from db import Database, EventRow
from tests.conftest import group_alive, orch, stand_in_study
from tests.orch._checks import assert_agrees_with_optuna

from .conftest import cli, write_yaml

STALL_S = 1.5
#: the controller wakes at the stall deadline (no polling of its own); what it may add on a loaded 2-core machine
LOOP_SLACK_S = 1.0


def _study(tmp_path, **extra):
    path = stand_in_study(tmp_path, max_trials=2, parallel=2, timeout_s=60, retries=1,
                          extra_args=["--stall-once", str(tmp_path / "stalled-once"), "--wall-s", "2"])
    spec = yaml.safe_load(path.read_text())
    spec.update(stall_s=STALL_S, **extra)
    return write_yaml(path, spec)


def _run_and_check(tmp_path, fleet, figures, launcher: str) -> None:
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    study = _study(tmp_path)
    assert cli("study", "create", "s", "--from", str(study), "--db", url)[0] == 0
    result = orch("study", "run", "s", "--db", url, "--fleet", str(fleet), "--plain", cwd=tmp_path, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    db = Database(url)
    rows = assert_agrees_with_optuna(db, "s")
    hung = [r for r in rows if r.exit_reason == "hung"]
    assert len(hung) == 1, [(r.number, r.state, r.exit_reason) for r in rows]
    (hung,) = hung
    assert hung.state == "lost" and "no log line for 1.5 s" in hung.note
    retry = next(r for r in rows if r.retry_of == hung.number)
    assert retry.state == "complete" and retry.attempt == 2 and retry.params == hung.params
    assert retry.machine != hung.machine  # re-run elsewhere: the other machine came first
    others = [r for r in rows if r.number not in (hung.number, retry.number)]
    assert [r.state for r in others] == ["complete"]  # ran 2 s (more than stall_s) printing every 0.5 s: not killed
    assert sorted(r.state for r in rows) == ["complete", "complete", "lost"]  # the budget of 2 complete
    log = open(hung.log_path).read()
    last_wall = float(re.search(r"stalling at step 30, wall ([0-9.]+)", log).group(1))
    with db.session() as s:
        stalled = s.scalar(select(EventRow).where(EventRow.kind == "trial.stalled",
                                                  EventRow.trial_number == hung.number))
    at = stalled.at if stalled.at.tzinfo else stalled.at.replace(tzinfo=timezone.utc)
    detected_s = at.timestamp() - last_wall
    assert STALL_S <= detected_s <= STALL_S + LOOP_SLACK_S, detected_s
    assert f"trial {hung.number}: no log line for" in output and f"hung on {hung.machine}" in output
    assert "health check program skipped: nvidia-smi lists no GPU on it" in output  # CPU machines: the stated reason
    if launcher == "local":  # the job's process group is gone (the remote one: the wrapper kills it on EOF)
        assert not group_alive(hung.pid)
    figures.record("8", "sqlite", injected=f"a trainer that stops printing mid-run ({launcher} launcher, stall_s "
                   f"{STALL_S:g} s)", behaviour=f"killed {detected_s:.2f} s after its last line (bound: stall_s + "
                   f"{LOOP_SLACK_S:g} s), recorded lost/hung, re-run as a recorded retry on the other machine, "
                   "which completed; a trainer printing every 0.5 s ran 2 s untouched",
                   recover_s=round(detected_s, 2), recover_what="last line to the kill", lost=0, duplicates=0)


def test_a_trainer_that_stops_printing_is_killed_recorded_hung_and_retried_elsewhere_local(tmp_path, figures):
    fleet = write_yaml(tmp_path / "fleet.yaml", {"machines": [
        {"name": name, "launcher": "local", "gpus": "none", "cpu_slots": 1} for name in ("a", "b")]})
    _run_and_check(tmp_path, fleet, figures, "local")


def test_a_trainer_that_stops_printing_is_killed_recorded_hung_and_retried_elsewhere_ssh(ssh_lab, tmp_path, figures):
    machines = [ssh_lab.machine(f"wd-{tag}") for tag in ("a", "b")]
    fleet = write_yaml(tmp_path / "fleet.yaml", {"machines": [m.fleet_entry(tmp_path / "remote") for m in machines]})
    _run_and_check(tmp_path, fleet, figures, "ssh")


def test_stall_s_null_turns_the_watchdog_off_and_the_timeout_still_applies(tmp_path):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    path = stand_in_study(tmp_path, max_trials=1, parallel=1, timeout_s=3, retries=0,
                          extra_args=["--stall-at", "30"])
    spec = yaml.safe_load(path.read_text())
    spec["stall_s"] = None
    write_yaml(path, spec)
    assert cli("study", "create", "s", "--from", str(path), "--db", url)[0] == 0
    began = time.monotonic()
    result = orch("study", "run", "s", "--db", url, "--plain", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = assert_agrees_with_optuna(Database(url), "s")
    assert (row.state, row.exit_reason) == ("failed", "timeout")  # not hung: nothing watched its progress
    assert time.monotonic() - began >= 3


@pytest.mark.parametrize("stall_s, timeout_s, ok", [(None, 60, True), (30, 60, True), (60, 60, False), (0.5, 60, False)])
def test_stall_s_is_validated(tmp_path, stall_s, timeout_s, ok):
    path = stand_in_study(tmp_path, timeout_s=timeout_s)
    spec = yaml.safe_load(path.read_text())
    spec["stall_s"] = stall_s
    write_yaml(path, spec)
    code, out, err = cli("study", "validate", str(path))
    assert (code == 0) == ok, out + err
    if not ok:
        assert code == 2 and "stall_s" in err and "fix:" in err
