"""Fault 3: a Ray node killed mid-trial (SIGKILL of its raylet; its `ray start --block` process then ends the rest).

The trial on that node ends as `lost` (machine_lost) within a bound, the machine is marked down, the trial is
re-queued and completes on the other node; its job on the dead node does not survive; no outcome lost, no silent
duplicate, our rows agree with Optuna's. Measured: kill -> trial marked lost, and kill -> its retry started.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import select

from db import Database, MachineRow, MetricPointRow, TrialRow
from tests.conftest import group_alive, orch, stand_in_study, wait_for
from tests.helpers.ray_lab import RayLab, ray_study
from tests.orch._checks import assert_agrees_with_optuna

from .conftest import backend, start_controller

DETECT_BOUND_S = 20.0  # Ray's health check notices a dead node in ~5 s (`orch fleet up` settings); dead_after_s is 15


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = RayLab(tmp_path_factory.mktemp("ray-fault"))
    yield lab
    stopped = lab.down()
    assert stopped.returncode == 0, stopped.stderr + stopped.stdout


@pytest.mark.slow
def test_a_killed_ray_node_fails_its_trial_which_completes_on_the_other_node(lab, db_url, tmp_path, figures):
    up = lab.up()  # idempotent: the second run restarts only the node the first one killed
    assert up.returncode == 0, up.stderr + up.stdout
    study = ray_study(tmp_path / "ray.yaml", stand_in_study(tmp_path, extra_args=["--wall-s", "6"], max_trials=2,
                                                            parallel=2, retries=2))
    assert orch("study", "create", "s", "--from", str(study), "--db", db_url, cwd=tmp_path).returncode == 0
    db = Database(db_url)
    controller = start_controller(db_url, tmp_path, "--fleet", str(lab.fleet), env=lab.env)
    try:
        def victim_streaming():
            with db.session() as s:
                return s.execute(select(TrialRow.id, TrialRow.number, TrialRow.workdir).join(
                    MetricPointRow, MetricPointRow.trial_id == TrialRow.id).where(
                    TrialRow.machine == "rb", TrialRow.state == "running").limit(1)).first()

        victim = wait_for(victim_streaming, 90, "a trial on rb streaming metric points")
        job_dir = lab.base / "nodes" / "rb" / "s" / f"trial-{victim.number:04d}"
        pgid = int((job_dir / ".orch-job.pid").read_text())
        raylet = lab.raylet_pid("rb")
        assert raylet is not None
        os.kill(raylet, signal.SIGKILL)
        killed = time.monotonic()

        def lost():
            with db.session() as s:
                row = s.get(TrialRow, victim.id)
                return row if row.state == "lost" else None

        row = wait_for(lost, DETECT_BOUND_S + 10, "the trial on the killed node marked lost")
        detected_s = time.monotonic() - killed
        assert row.exit_reason == "machine_lost" and "rb" in row.note, row.note

        def retry_started():
            with db.session() as s:
                return s.scalar(select(TrialRow).where(TrialRow.retry_of == victim.number,
                                                       TrialRow.state.in_(("running", "complete"))))

        retry = wait_for(retry_started, 60, "the retry of the lost trial started")
        requeued_s = time.monotonic() - killed
        assert retry.machine == "ra"
        out, _ = controller.communicate(timeout=120)
        assert controller.returncode == 0, out
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
    assert detected_s < DETECT_BOUND_S, f"lost after {detected_s:.1f} s"
    assert not group_alive(pgid), "the job on the dead node outlived it"
    with db.session() as s:
        machine = s.scalar(select(MachineRow).where(MachineRow.name == "rb"))
        assert machine.state == "down" and "rb" in (machine.note or "")
    rows = assert_agrees_with_optuna(db, "s")
    assert [(r.state, r.machine) for r in rows if r.number != victim.number] == [("complete", "ra"), ("complete", "ra")]
    assert [r for r in rows if r.retry_of == victim.number][0].params == row.params
    figures.record("3", backend(db_url), injected="SIGKILL of a Ray node's raylet mid-trial (two-node cluster on "
                   "127.0.0.2/.3 started by `orch fleet up`)",
                   behaviour="the trial on it marked lost (machine_lost), the machine marked down, its job's process "
                   "group gone, the trial re-queued and completed on the other node; Optuna and our tables agree",
                   recover_s=round(requeued_s, 2), recover_what="kill to the retry's start on the other node",
                   detect_s=round(detected_s, 2), lost=0, duplicates=0)
