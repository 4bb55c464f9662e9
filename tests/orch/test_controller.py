"""The controller on SQLite and PostgreSQL, with real job processes (the stand-in trainer)."""

from __future__ import annotations

import os
import time

import optuna
import pytest
from sqlalchemy import select

from db import Database, EventRow, MetricPointRow
from orchestrator.config.fleet_file import load_fleet
from orchestrator.run.controller import Controller
from orchestrator.launchers.local import process_alive
from orchestrator.study.lifecycle import create_study
from tests.conftest import stand_in_study

from ._checks import assert_agrees_with_optuna, rows_of


def _run(db_url, tmp_path, monkeypatch, **kwargs):
    monkeypatch.chdir(tmp_path)
    db = Database(db_url)
    create_study(db, "s", stand_in_study(tmp_path, **kwargs))
    messages = []
    progress = Controller(db, "s", load_fleet(None), reporter=lambda p, m: messages.append(m) if m else None,
                          heartbeat_s=0.5).run()
    return db, progress, messages


def test_study_runs_to_completion_and_agrees_with_optuna(db_url, tmp_path, monkeypatch):
    db, progress, _ = _run(db_url, tmp_path, monkeypatch, max_trials=6, parallel=2)
    rows = assert_agrees_with_optuna(db, "s")
    assert [r.state for r in rows] == ["complete"] * 6
    assert progress.done == 6 and progress.round == 3
    assert [r.round for r in rows] == [1, 1, 2, 2, 3, 3]
    for row in rows:
        s1, s2, s3 = (row.params[k] for k in ("stage1", "stage2", "stage3"))
        assert abs(s1 + s2 + s3 - 1) < 1e-9
        assert row.command[-4:] == ["--stage-durations", f"{s1:.4f},{s2:.4f},{s3:.4f}", "--seed", str(row.number)]
        assert row.metrics["train_time_s"] == pytest.approx(row.value)
        assert row.feasible == (row.metrics["val_loss"] <= 3.24)
        assert row.started_at and row.ended_at and row.log_path and os.path.isfile(row.log_path)
        assert row.versions["python"]
        assert row.code_revision is None or len(row.code_revision) == 40
    with db.session() as s:
        points = s.scalars(select(MetricPointRow).where(MetricPointRow.trial_id == rows[0].id)
                           .where(MetricPointRow.kind == "val").order_by(MetricPointRow.step)).all()
        events = s.scalars(select(EventRow).where(EventRow.trial_number == 0, EventRow.kind == "trial.state")).all()
    assert [p.step for p in points] == [25, 50, 75, 100]
    assert points[-1].val_loss == pytest.approx(rows[0].metrics["val_loss"])
    assert [(e.old, e.new) for e in events] == [(None, "pending"), ("pending", "running"), ("running", "complete")]


def test_repeats_run_each_variant_n_times(sqlite_url, tmp_path, monkeypatch):
    db, _, _ = _run(sqlite_url, tmp_path, monkeypatch, max_trials=6, parallel=2, repeats=3)
    rows = assert_agrees_with_optuna(db, "s")
    variants = {}
    for row in rows:
        variants.setdefault(row.variant, []).append(row)
    assert sorted(len(v) for v in variants.values()) == [3, 3]
    for group in variants.values():
        assert sorted(r.repeat_index for r in group) == [0, 1, 2]
        assert len({tuple(sorted(r.params.items())) for r in group}) == 1
        assert len({r.metrics["val_loss"] for r in group}) > 1  # different seeds: real scatter


@pytest.mark.parametrize("args, reason, words", [
    (["--crash-at", "30"], "crashed", "the trainer did not finish); the job's last error: RuntimeError: simulated crash"),
    (["--diverge-at", "10"], "diverged", "non-finite"),
])
def test_failed_runs_are_recorded_with_their_reason(sqlite_url, tmp_path, monkeypatch, args, reason, words):
    db, progress, _ = _run(sqlite_url, tmp_path, monkeypatch, extra_args=args, max_trials=2, parallel=2)
    rows = assert_agrees_with_optuna(db, "s")
    assert [r.state for r in rows] == ["failed", "failed"]
    assert {r.exit_reason for r in rows} == {reason}
    assert all(words in r.note for r in rows), rows[0].note
    assert progress.failed == 2


def test_timeout_kills_the_whole_process_group(sqlite_url, tmp_path, monkeypatch):
    started = time.monotonic()
    db, _, _ = _run(sqlite_url, tmp_path, monkeypatch, extra_args=["--hang"], max_trials=2, parallel=2, timeout_s=1.5)
    assert time.monotonic() - started < 20
    rows = assert_agrees_with_optuna(db, "s")
    assert [(r.state, r.exit_reason) for r in rows] == [("failed", "timeout")] * 2
    for row in rows:
        assert not process_alive(row.pid, row.pid_start)


def test_invalid_derived_values_are_skipped_not_run(sqlite_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = Database(sqlite_url)
    path = stand_in_study(tmp_path, max_trials=2, parallel=1)
    path.write_text(path.read_text().replace("min: 0.05", "min: 0.35"))  # stage3 >= 0.35: many points invalid
    create_study(db, "s", path)
    study = optuna.load_study(study_name="s", storage=sqlite_url)
    study.enqueue_trial({"stage1": 0.6, "stage2": 0.3})  # stage3 = 0.1 < 0.35
    Controller(db, "s", load_fleet(None), heartbeat_s=0.5).run()
    rows = assert_agrees_with_optuna(db, "s")
    assert rows[0].state == "invalid" and "below its min" in rows[0].note and rows[0].pid is None
    assert sum(r.state == "complete" for r in rows) == 2
