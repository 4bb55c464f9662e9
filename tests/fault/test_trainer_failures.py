"""Fault 4: the trainer diverges (a non-finite loss, reported in its final line) or crashes without its final
line. The trial fails with the reason recorded, and the sampler is told what the study's `on_failure` says:
`infeasible` (a complete Optuna trial violating every constraint, which constrained samplers learn from) or
`retry` (the same values again, recorded as a retry, at most `retries` times).
"""

from __future__ import annotations

import optuna
import yaml
from optuna.trial import TrialState

from db import Database
from tests.conftest import orch, stand_in_study
from tests.orch._checks import assert_agrees_with_optuna

from .conftest import backend


def _study(tmp_path, extra_args, on_failure, **kwargs):
    path = stand_in_study(tmp_path, extra_args=extra_args, **kwargs)
    spec = yaml.safe_load(path.read_text())
    spec["on_failure"] = on_failure
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run(db_url, tmp_path, study):
    assert orch("study", "create", "s", "--from", str(study), "--db", db_url, cwd=tmp_path).returncode == 0
    result = orch("study", "run", "s", "--db", db_url, "--plain", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return assert_agrees_with_optuna(Database(db_url), "s")


def test_divergence_is_a_failure_the_sampler_sees_as_infeasible(db_url, tmp_path, figures):
    study = _study(tmp_path, ["--diverge-at", "10"], {"diverged": "infeasible"}, max_trials=3, parallel=1,
                   sampler="tpe")
    rows = _run(db_url, tmp_path, study)
    assert [(r.state, r.exit_reason, r.feasible) for r in rows] == [("failed", "diverged", False)] * 3
    assert all("non-finite loss" in r.note and "infeasible" in r.note for r in rows)
    trials = optuna.load_study(study_name="s", storage=db_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(t.constraints["val_loss"] > 0 for t in trials)  # what a constrained sampler learns from
    figures.record("4a", backend(db_url), injected="the trainer diverges (non-finite loss, final line says diverged)",
                   behaviour="trial failed, exit reason diverged, note recorded; told to Optuna as complete and "
                   "infeasible (on_failure.diverged: infeasible)", recover_s=None, recover_what="no recovery needed",
                   lost=0, duplicates=0)


def test_a_crash_without_a_final_line_is_retried_when_the_study_says_so(db_url, tmp_path, figures):
    flake = tmp_path / "crashed-once"
    study = _study(tmp_path, ["--crash-once", str(flake)], {"crashed": "retry"}, max_trials=3, parallel=1, retries=1)
    rows = _run(db_url, tmp_path, study)
    crashed = rows[0]
    assert (crashed.state, crashed.exit_reason) == ("failed", "crashed")
    assert "exit status 1" in crashed.note and "no final @@metrics line" in crashed.note
    retry = next(r for r in rows if r.retry_of == crashed.number)
    assert retry.state == "complete" and retry.attempt == 2 and retry.params == crashed.params
    assert [r.state for r in rows].count("complete") == 2 and len(rows) == 3  # the retry counts against the budget
    recovered_s = (retry.started_at - crashed.ended_at).total_seconds()
    figures.record("4b", backend(db_url), injected="the trainer crashes without its final line (exit 1, traceback)",
                   behaviour="trial failed, exit reason crashed, exit status and reason recorded; re-run with the same "
                   "values as a recorded retry (on_failure.crashed: retry), which completed",
                   recover_s=round(recovered_s, 2), recover_what="crash recorded to the retry started",
                   lost=0, duplicates=0)


def test_retries_of_a_failure_are_bounded(sqlite_url, tmp_path):
    study = _study(tmp_path, ["--crash-at", "30"], {"crashed": "retry"}, max_trials=3, parallel=1, retries=1)
    rows = _run(sqlite_url, tmp_path, study)
    assert [(r.state, r.retry_of, r.attempt) for r in rows] == [("failed", None, 1), ("failed", 0, 2), ("failed", None, 1)]


def test_infeasible_needs_a_constraint(tmp_path):
    path = _study(tmp_path, [], {"diverged": "infeasible"})
    spec = yaml.safe_load(path.read_text())
    spec["objective"] = {"minimize": "train_time_s"}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = orch("study", "validate", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "on_failure.diverged: `infeasible` needs a constraint" in result.stderr
