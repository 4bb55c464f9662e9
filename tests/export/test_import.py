"""`orch import csv`: the reference campaign joins the database (our rows and Optuna's, same numbering),
and bad tables are refused with file/line/column while the database stays exactly as it was."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from db import Database
from orchestrator.config.errors import OrchError
from orchestrator.study.csv_import import CsvImportError, import_csv
from tests.conftest import orch
from tests.orch._checks import assert_agrees_with_optuna, rows_of

from ._helpers import REPO, TARGET, dump_db, reference_csv, reference_rows


@pytest.fixture
def imported(tmp_path):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    db = Database(url)
    result = import_csv(db, reference_csv(), "stage-shift")
    return url, db, result


def test_reference_table_is_imported_row_for_row(imported):
    url, db, result = imported
    source = reference_rows()
    assert (result.runs, result.rounds, result.generated_spec) == (24, 6, True)
    rows = assert_agrees_with_optuna(db, "stage-shift")  # states, values, constraints agree with Optuna
    assert [r.number for r in rows] == list(range(24))
    for row, src in zip(rows, source):
        assert row.round == int(src["round"]) and row.state == "complete" and row.machine == src["machine"]
        assert row.note == (src["note"] or None)
        assert row.value == float(src["time_s"]) and row.metrics == {"train_time_s": float(src["time_s"]),
                                                                      "val_loss": float(src["val_loss"])}
        assert row.params == {k: float(src[k]) for k in ("stage1", "stage2", "stage3")}
        assert row.feasible == (float(src["val_loss"]) <= TARGET)
        if "hit" in src["note"]:
            assert row.feasible, src
    assert result.hits == sum(1 for s in source if float(s["val_loss"]) <= TARGET)
    # repeats of one variant share its key
    by_variant = {}
    for row in rows:
        by_variant.setdefault(row.variant, set()).add(tuple(sorted(row.params.items())))
    assert all(len(v) == 1 for v in by_variant.values()) and len(by_variant) == 16


def test_optuna_load_study_sees_the_campaign(imported):
    """optuna-dashboard compatibility: plain Optuna reads the study from our database URL."""
    url, _, _ = imported
    assert "stage-shift" in optuna.get_all_study_names(storage=url)
    study = optuna.load_study(study_name="stage-shift", storage=url)
    trials = study.get_trials()
    assert len(trials) == 24 and all(t.state == TrialState.COMPLETE for t in trials)
    source = reference_rows()
    for t, src in zip(trials, source):
        assert t.value == float(src["time_s"]) and t.params["stage1"] == float(src["stage1"])
        # stored the way Trial.set_constraint stores it (Optuna 5): system attr "constraints:val_loss"
        assert math.isclose(t.system_attrs["constraints:val_loss"], float(src["val_loss"]) - TARGET, abs_tol=1e-12)
        assert t.constraints == {"val_loss": t.system_attrs["constraints:val_loss"]}
        assert t.user_attrs["round"] == int(src["round"]) and t.user_attrs["experiment"] == int(src["experiment"])
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    feasible = [t for t in trials if t.constraints["val_loss"] <= 0]
    assert min(feasible, key=lambda t: t.value).number == 20  # the record run, 57.382 s
    assert study.best_trial.number == 20  # Optuna 5's best_trial honours the constraints (not 53.8 s, a miss)


BAD = [
    ("round,stage1,stage2,machine,val_loss\n1,0.3,0.3,m,3.27\n", ":1: missing column 'train_time_s' (or 'time_s')"),
    ("round,stage1,time_s,val_loss\n1,0.3,58,3.27\n2,abc,57,3.28\n", ":3: column 'stage1': 'abc' is not a number"),
    ("round,stage1,time_s,val_loss\n1,0.3,58,3.27\n1.5,0.3,57,3.28\n", ":3: column 'round': '1.5' is not an integer"),
    ("round,stage1,time_s,val_loss\n1,0.3,58,\n", ":2: column 'val_loss' is empty"),
    ("round,stage1,time_s,val_loss\n1,0.3,58,3.27,extra\n", ":2: 5 cells, the header has 4"),
    ("round,stage1,time_s,val_loss\n1,0.3,inf,3.27\n", ":2: column 'time_s': 'inf' is not a finite number"),
    ("round,time_s,val_loss\n1,58,3.27\n", ":1: no parameter columns"),
    ("", ": the file is empty"),
]


def test_bad_tables_name_file_line_column_and_leave_the_database_untouched(imported, tmp_path):
    url, db, _ = imported
    before = dump_db(url)
    for i, (content, words) in enumerate(BAD):
        bad = tmp_path / f"bad{i}.csv"
        bad.write_text(content)
        with pytest.raises(CsvImportError) as err:
            import_csv(db, bad, "broken")
        assert f"{bad}{words}" in str(err.value) and "(fix: " in str(err.value), (content, str(err.value))
    with pytest.raises(CsvImportError, match="no such file"):
        import_csv(db, tmp_path / "absent.csv", "broken")
    assert dump_db(url) == before


def test_a_failure_while_writing_rolls_back_and_deletes_the_optuna_study(imported, monkeypatch):
    url, db, _ = imported
    before = dump_db(url)
    import orchestrator.study.csv_import as importing

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(importing, "variant_key", boom)  # fails inside our transaction, after Optuna's trials
    with pytest.raises(RuntimeError):
        import_csv(db, reference_csv(), "half")
    assert "half" not in optuna.get_all_study_names(storage=url)
    assert dump_db(url) == before


def test_existing_name_objective_constraint_and_from_options(imported, tmp_path):
    url, db, _ = imported
    with pytest.raises(OrchError, match="already exists"):
        import_csv(db, reference_csv(), "stage-shift")
    import_csv(db, reference_csv(), "tight", constraints=["val_loss <= 3.279"])
    assert sum(r.feasible for r in rows_of(db, "tight")) == sum(float(s["val_loss"]) <= 3.279 for s in reference_rows())
    import_csv(db, reference_csv(), "loss", objective="minimize:val_loss", constraints=["time_s <= 57.5"])
    rows = rows_of(db, "loss")
    assert [r.value for r in rows] == [float(s["val_loss"]) for s in reference_rows()]
    assert [r.feasible for r in rows] == [float(s["time_s"]) <= 57.5 for s in reference_rows()]
    with pytest.raises(CsvImportError, match="--constraint 'val_loss < 3' is malformed"):
        import_csv(db, reference_csv(), "x", constraints=["val_loss < 3"])
    spec = tmp_path / "stages.yaml"
    spec.write_text(
        "trainer: {command: [python, train.py], log_format: orch}\n"
        "parameters:\n  stage1: {type: float, low: 0.25, high: 0.5}\n  stage2: {type: float, low: 0.2, high: 0.4}\n"
        "derived:\n  stage3: {expr: '1 - stage1 - stage2', min: 0.05}\n"
        "objective: {minimize: train_time_s, subject_to: ['val_loss <= 3.28']}\n"
        "sampler: {name: random}\nbudget: {max_trials: 50}\n")
    import_csv(db, reference_csv(), "with-spec", from_=spec)
    rows = rows_of(db, "with-spec")
    assert rows[0].params["stage3"] == 0.3333  # the derived value as recorded in the table
    study = optuna.load_study(study_name="with-spec", storage=url)
    assert set(study.trials[0].params) == {"stage1", "stage2"}
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(spec.read_text().replace("high: 0.5}", "high: 0.45}"))
    before = dump_db(url)
    with pytest.raises(CsvImportError, match=r"stage-shift-2026-03-15.csv:3: column 'stage1': 0.5 is outside"):
        import_csv(db, reference_csv(), "narrow", from_=narrow)
    assert dump_db(url) == before


def test_cli_import_then_export(tmp_path):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    result = orch("import", "csv", str(reference_csv()), "--study", "ss", "--db", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "imported 24 runs in 6 rounds (10 met the target)" in result.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("round,stage1,time_s,val_loss\n1,x,58,3.27\n")
    before = dump_db(url)
    result = orch("import", "csv", str(bad), "--study", "bad", "--db", url, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{bad}:2: column 'stage1': 'x' is not a number" in result.stderr
    assert dump_db(url) == before
    status = orch("study", "status", "ss", "--json", "--db", url, cwd=tmp_path)
    assert status.returncode == 0 and '"complete": 24' in status.stdout
