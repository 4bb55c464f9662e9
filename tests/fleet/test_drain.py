"""`orch fleet drain` / `undrain`: the flag in the database, a running controller (another process) obeying it
without a restart and within its bound (`MACHINE_STATE_READ_S`), the status view's draining -> drained -> idle, clear
errors, and an older database upgraded."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db import Database, EventRow, MachineRow, TrialRow
from orchestrator.config.errors import ConfigError
from orchestrator.config.fleet_file import load_fleet
from orchestrator.run.controller import Controller
from orchestrator.run.fleet_state import MACHINE_STATE_READ_S
from orchestrator.fleet.drain import set_drain
from orchestrator.study.lifecycle import create_study
from tests.conftest import REPO, orch, stand_in_study, wait_for


#: a trial's row is written in the pass that decided to start it; the pass may take this long on a loaded machine
PASS_SLACK_S = 0.5


def _fleet_file(tmp_path: Path, cpu_slots: int = 1) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"machines": [
        {"name": "l1", "launcher": "local", "gpus": "none", "cpu_slots": cpu_slots, "workdir": str(tmp_path / "w1")},
        {"name": "l2", "launcher": "local", "gpus": "none", "cpu_slots": cpu_slots, "workdir": str(tmp_path / "w2")}]}))
    return path


def test_drain_flag_in_the_database(db_url, tmp_path):
    fleet = load_fleet(_fleet_file(tmp_path))
    db = Database(db_url)
    result = set_drain(db, fleet, "l1", True)
    assert result.changed and result.drain and "drained" in result.message()
    assert not set_drain(db, fleet, "l1", True).changed
    with db.session() as s:
        row = s.scalar(select(MachineRow).where(MachineRow.name == "l1"))
        assert row.drain is True and row.launcher == "local"
        assert s.scalar(select(EventRow.new).where(EventRow.kind == "machine.drain")) == "drained"
    with pytest.raises(ConfigError) as err:
        set_drain(db, fleet, "nosuch", True)
    assert "fleet.yaml" in str(err.value) and "'nosuch'" in str(err.value) and "l1, l2" in str(err.value)
    assert set_drain(db, fleet, "l1", False).changed
    with db.session() as s:
        assert s.scalar(select(MachineRow.drain).where(MachineRow.name == "l1")) is False


def test_a_drain_applies_within_its_bound(db_url, tmp_path, monkeypatch):
    """A drain committed by another connection while trials keep ending on the machine: no trial is started there
    later than MACHINE_STATE_READ_S (plus the pass that wrote the row) after the drain committed, although the
    study goes on dispatching for seconds after it."""
    monkeypatch.chdir(tmp_path)
    fleet = load_fleet(_fleet_file(tmp_path, cpu_slots=2))
    db = Database(db_url)
    create_study(db, "s", stand_in_study(tmp_path, max_trials=60, parallel=4, dispatch="continuous",
                                         extra_args=["--wall-s", "0.3"]))
    outcome = {}

    def run():
        try:
            outcome["progress"] = Controller(Database(db_url), "s", fleet).run()
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    controller = threading.Thread(target=run, daemon=True)
    controller.start()

    def trials_on(machine: str) -> list[datetime]:
        with db.session() as s:
            return [_aware(t) for t in s.scalars(select(TrialRow.created_at).where(TrialRow.machine == machine))]

    _wait("three trials on l1", lambda: len(trials_on("l1")) >= 3)
    set_drain(db, fleet, "l1", True)  # another connection, as `orch fleet drain` in another process
    drained_at = datetime.now(timezone.utc)  # after its commit
    controller.join(timeout=120)
    assert not controller.is_alive() and "error" not in outcome, outcome.get("error")
    assert outcome["progress"].done == 60
    bound = drained_at + timedelta(seconds=MACHINE_STATE_READ_S + PASS_SLACK_S)
    late_on_l1 = [t for t in trials_on("l1") if t > bound]
    lags = [round((t - drained_at).total_seconds(), 3) for t in late_on_l1]
    assert late_on_l1 == [], f"trials started on the drained machine {lags} s after the drain"
    assert max(trials_on("l2")) > bound + timedelta(seconds=2)  # the study kept dispatching well past the bound


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def test_cli_errors_for_an_unknown_machine(tmp_path):
    fleet = _fleet_file(tmp_path)
    for command in ("drain", "undrain"):
        result = orch("fleet", command, "h9", "--fleet", str(fleet), "--db", f"sqlite:///{tmp_path / 'o.db'}",
                      cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "no machine named 'h9'" in result.stderr and "l1, l2" in result.stderr and str(fleet) in result.stderr


def _status(fleet: Path, url: str, tmp_path: Path) -> dict:
    result = orch("fleet", "status", "--json", "--fleet", str(fleet), "--db", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return {m["name"]: m for m in json.loads(result.stdout)["machines"]}


def _wait(what: str, condition, timeout: float = 30.0):
    return wait_for(condition, timeout, what, every=0.1)


@pytest.mark.slow
def test_drain_and_undrain_a_machine_of_a_running_study(tmp_path):
    fleet = _fleet_file(tmp_path)
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    db = Database(url)
    create_study(db, "s", stand_in_study(tmp_path, max_trials=10, parallel=2, dispatch="continuous",
                                         extra_args=["--wall-s", "2.5"]))
    run = subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", "study", "run", "s", "--plain",
                            "--fleet", str(fleet), "--db", url], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    try:
        def running_on(machine: str):
            with db.session() as s:
                return s.scalar(select(TrialRow.number).where(TrialRow.machine == machine, TrialRow.state == "running"))

        _wait("a trial on l1", lambda: running_on("l1"))
        drained = orch("fleet", "drain", "l1", "--fleet", str(fleet), "--db", url, cwd=tmp_path)
        assert drained.returncode == 0, drained.stderr
        # the CLI starts in ~1 s: the trial it finds running on l1 may be a later one than the one seen above
        named = re.search(r"^l1: draining: 1 running trial\(s\) finish there \(s#(\d+)\)", drained.stdout)
        assert named, drained.stdout
        busy = int(named.group(1))
        with db.session() as s:
            assert s.scalar(select(TrialRow.machine).where(TrialRow.number == busy)) == "l1"
        view = _status(fleet, url, tmp_path)
        if view["l1"]["running"]:  # the trial may have ended meanwhile; if not, it is shown finishing
            assert view["l1"]["state"] == "draining" and view["l1"]["running"][0]["number"] == busy
        assert view["l2"]["state"] in ("busy", "idle") and view["l1"]["drain"] is True

        def finished(number: int):
            with db.session() as s:
                return s.scalar(select(TrialRow.state).where(TrialRow.number == number)) in ("complete", "failed")

        _wait("the running trial to finish on the drained machine", lambda: finished(busy))
        with db.session() as s:
            assert s.scalar(select(TrialRow.state).where(TrialRow.number == busy)) == "complete"  # it ran to its end
        assert _status(fleet, url, tmp_path)["l1"]["state"] == "drained"
        with db.session() as s:
            drained_at = s.scalar(select(EventRow.at).where(EventRow.kind == "machine.drain", EventRow.new == "drained"))

        # its trials start within MACHINE_STATE_READ_S of the drain's commit (test_a_drain_applies_within_its_bound)
        applied = drained_at + timedelta(seconds=MACHINE_STATE_READ_S + PASS_SLACK_S)

        def started_since_drain():
            with db.session() as s:
                return s.execute(select(TrialRow.number, TrialRow.machine).where(TrialRow.created_at > applied)).all()

        _wait("two trials started after the drain", lambda: len(started_since_drain()) >= 2)
        assert {m for _, m in started_since_drain()} == {"l2"}  # the study went on, never on the drained machine

        undrained = orch("fleet", "undrain", "l1", "--fleet", str(fleet), "--db", url, cwd=tmp_path)
        assert undrained.returncode == 0 and "undrained" in undrained.stdout
        _wait("a new trial on l1 after undrain", lambda: running_on("l1"), timeout=15)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait(timeout=30)
    assert run.returncode == 0, err[-2000:]
    assert "machine l1 is draining" in out and "machine l1 was undrained" in out
    with db.session() as s:
        rows = s.scalars(select(TrialRow)).all()
    assert len(rows) == 10 and {r.state for r in rows} == {"complete"}
    view = _status(fleet, url, tmp_path)
    assert view["l1"]["state"] == "idle" and view["l2"]["state"] == "idle"
