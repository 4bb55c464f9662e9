"""Fault 2 (the sshd part; the network-namespace link cut is tests/fleet's): the sshd of one of two loopback
machines (tests/fleet/conftest.py) is killed mid-trial. The trial is marked lost to the machine within the
keepalive bound, the machine is marked down, and the trial is re-run as a recorded retry on the other machine."""

from __future__ import annotations

import threading
import time

import yaml
from sqlalchemy import select

from db import Database, MachineRow, MetricPointRow, TrialRow
from orchestrator.config.fleet_file import load_fleet
from orchestrator.run.controller import Controller
from orchestrator.launchers.ssh import SshLauncher
from orchestrator.study.lifecycle import create_study
from tests.conftest import stand_in_study, wait_for
from tests.orch._checks import assert_agrees_with_optuna, rows_of

from .conftest import backend

KEEPALIVE_S, DEAD_AFTER_S = 0.5, 2.0


def test_sshd_killed_mid_trial_the_trial_is_rerun_on_another_machine(ssh_lab, db_url, tmp_path, monkeypatch, figures):
    monkeypatch.chdir(tmp_path)
    tag = backend(db_url)[:2]
    doomed, spare = ssh_lab.machine(f"doomed-{tag}"), ssh_lab.machine(f"spare-{tag}")
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump({"machines": [doomed.fleet_entry(tmp_path / "r1"),
                                                       spare.fleet_entry(tmp_path / "r2")]}))
    db = Database(db_url)
    create_study(db, "s", stand_in_study(tmp_path, max_trials=2, parallel=2, retries=1,
                                         extra_args=["--wall-s", "4", "--val-every", "1"]))
    launcher = SshLauncher(keepalive_s=KEEPALIVE_S, dead_after_s=DEAD_AFTER_S)
    controller = Controller(db, "s", load_fleet(fleet_file), launchers={"ssh": launcher}, heartbeat_s=0.5)
    thread = threading.Thread(target=controller.run, daemon=True)
    thread.start()
    try:
        def reporting():
            with db.session() as s:
                return set(s.scalars(select(TrialRow.machine).join(MetricPointRow, MetricPointRow.trial_id == TrialRow.id)
                                     .distinct()))
        wait_for(lambda: reporting() == {doomed.name, spare.name}, 30, "both machines' trials to report")
        killed = time.monotonic()
        doomed.kill()
        lost = wait_for(lambda: [r for r in rows_of(db, "s") if r.state == "lost"], 30, "the trial to be marked lost")
        detected_s = time.monotonic() - killed
        wait_for(lambda: any(r.retry_of == lost[0].number and r.state == "running" for r in rows_of(db, "s")), 30,
                 "the retry to start on the other machine")
        rerun_s = time.monotonic() - killed
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        launcher.close()
    assert detected_s < KEEPALIVE_S + DEAD_AFTER_S + 2
    rows = assert_agrees_with_optuna(db, "s")
    assert sorted(r.state for r in rows) == ["complete", "complete", "lost"]
    (gone,) = [r for r in rows if r.state == "lost"]
    assert gone.machine == doomed.name and gone.exit_reason == "machine_lost" and "connection lost" in gone.note
    retry = next(r for r in rows if r.retry_of == gone.number)
    assert retry.machine == spare.name and retry.params == gone.params and retry.attempt == 2
    with db.session() as s:
        assert s.scalar(select(MachineRow.state).where(MachineRow.name == doomed.name)) == "down"
    figures.record("2a", backend(db_url), injected="sshd of one of two machines killed mid-trial (loopback sshd, "
                   f"keepalive {KEEPALIVE_S:g} s, dead after {DEAD_AFTER_S:g} s)",
                   behaviour=f"trial marked lost (machine_lost) {detected_s:.2f} s after the kill, machine marked down, "
                   "trial re-queued and completed on the other machine as a recorded retry",
                   recover_s=round(rerun_s, 2), recover_what="kill to the retry running elsewhere", lost=0, duplicates=0)
