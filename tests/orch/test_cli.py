"""The `orch` CLI as a user runs it: bad input gives one clear message, a non-zero exit, no traceback, and
leaves the database exactly as it was; status and export views agree with the database."""

from __future__ import annotations

import csv
import io
import json

import pytest

from db import Database
from tests.conftest import dump_database, orch, stand_in_study

from ._checks import rows_of


@pytest.fixture
def ready(db_url, tmp_path):
    """A database holding one finished study `s` (2 trials)."""
    study = stand_in_study(tmp_path, max_trials=2, parallel=2)
    assert orch("study", "create", "s", "--from", str(study), "--db", db_url, cwd=tmp_path).returncode == 0
    result = orch("study", "run", "s", "--db", db_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return db_url, tmp_path, study


def _bad_cases(tmp_path, study):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("trainer: [\n")
    bad_metric = tmp_path / "metric.yaml"
    bad_metric.write_text(study.read_text().replace("minimize: train_time_s", "minimize: tokens_per_joule"))
    bad_fleet = tmp_path / "bad-fleet.yaml"
    bad_fleet.write_text("machines:\n  - name: a\n    gpus: eight\n")
    big_gpus = tmp_path / "gpus.yaml"
    big_gpus.write_text(study.read_text().replace("budget:", "resources: {gpus: 8}\nbudget:"))
    return [
        (["study", "create", "s", "--from", str(study)], "already exists"),
        (["study", "create", "t", "--from", str(bad_yaml)], "bad.yaml:2: not valid YAML"),
        (["study", "create", "t", "--from", str(bad_metric)], "metric.yaml:28: objective.minimize: metric 'tokens_per_joule' is never printed"),
        (["study", "create", "t", "--from", str(tmp_path / "missing.yaml")], "missing.yaml: file not found"),
        (["study", "create", "bad name!", "--from", str(study)], "is not allowed"),
        (["study", "run", "nope"], "no study named 'nope'"),
        (["study", "run", "s", "--fleet", str(bad_fleet)], "bad-fleet.yaml:3: machines[0].gpus: GPU count must be a positive integer"),
        (["study", "status", "nope"], "no study named 'nope'"),
        (["export", "s", "--format", "pdf"], "unknown export format 'pdf'"),
        (["export", "nope"], "no study named 'nope'"),
        (["study", "run"], "Missing argument"),
        (["study", "run", "s", "--max-new", "0"], "Invalid value"),
    ]


def test_bad_input_gives_a_clear_error_and_leaves_the_database_untouched(ready):
    db_url, tmp_path, study = ready
    before = dump_database(db_url)
    for args, words in _bad_cases(tmp_path, study):
        result = orch(*args, "--db", db_url, cwd=tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode != 0, args
        assert words in output, (args, output)
        assert "Traceback" not in output, (args, output)
    assert dump_database(db_url) == before


def test_asking_more_gpus_than_any_machine_has(sqlite_url, tmp_path):
    study = stand_in_study(tmp_path)
    study.write_text(study.read_text().replace("budget:", "resources:\n  gpus: 8\nbudget:"))
    assert orch("study", "create", "g", "--from", str(study), "--db", sqlite_url, cwd=tmp_path).returncode == 0
    before = [r.number for r in rows_of(Database(sqlite_url), "g")]
    result = orch("study", "run", "g", "--db", sqlite_url, cwd=tmp_path)
    assert result.returncode == 2 and "asks 8 GPU(s) per trial but no reachable machine has that many" in result.stderr
    assert before == [r.number for r in rows_of(Database(sqlite_url), "g")] == []


def test_unreachable_database_url(tmp_path):
    result = orch("study", "list", "--db", "postgresql+psycopg://orch:hunter2@127.0.0.1:1/nope", cwd=tmp_path)
    assert result.returncode == 3
    assert "cannot reach database postgresql+psycopg://orch:***@127.0.0.1:1/nope" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    result = orch("study", "list", "--db", "not a url", cwd=tmp_path)  # bad input (exit 2), not an unreachable server
    assert result.returncode == 2 and "is not a SQLAlchemy URL" in result.stderr


def test_orch_db_env_is_the_default_database(tmp_path):
    sqlite_url = f"sqlite:///{tmp_path / 'from-env.db'}"
    study = stand_in_study(tmp_path)
    assert orch("study", "create", "e", "--from", str(study), cwd=tmp_path, env={"ORCH_DB": sqlite_url}).returncode == 0
    listing = orch("study", "list", "--json", cwd=tmp_path, env={"ORCH_DB": sqlite_url})
    assert [s["study"] for s in json.loads(listing.stdout)] == ["e"]
    assert not (tmp_path / "orch.db").exists()


def test_exports_agree_with_the_database(ready):
    db_url, tmp_path, _ = ready
    rows = rows_of(Database(db_url), "s")
    md = orch("export", "s", "--format", "md", "--db", db_url, cwd=tmp_path).stdout
    assert "## Round 1" in md and "| trial | stage1 | stage2 | stage3 | machine | train_time_s | val_loss | hit |" in md
    for row in rows:
        mark = "✓" if row.feasible else "✗"
        line = next(l for l in md.splitlines() if l.startswith(f"| {row.number} |"))
        assert f"{row.value:.4f}".rstrip("0").rstrip(".") in line and f"| {mark} |" in line
    table = list(csv.DictReader(io.StringIO(orch("export", "s", "--format", "csv", "--db", db_url, cwd=tmp_path).stdout)))
    assert [int(r["number"]) for r in table] == [r.number for r in rows]
    assert [float(r["value"]) for r in table] == [r.value for r in rows]
    assert [float(r["metrics.val_loss"]) for r in table] == [r.metrics["val_loss"] for r in rows]
    data = json.loads(orch("export", "s", "--format", "json", "--db", db_url, cwd=tmp_path).stdout)
    assert [t["value"] for t in data["trials"]] == [r.value for r in rows]
    assert [json.loads(t["command"]) for t in data["trials"]] == [r.command for r in rows]
    out = tmp_path / "out" / "s.md"
    assert orch("export", "s", "--out", str(out), "--db", db_url, cwd=tmp_path).returncode == 0
    assert out.read_text().strip() == md.strip()


def test_status_views(ready):
    db_url, tmp_path, _ = ready
    status = json.loads(orch("study", "status", "s", "--json", "--db", db_url, cwd=tmp_path).stdout)
    rows = rows_of(Database(db_url), "s")
    assert status["trials"] == {"complete": 2} and status["status"] == "finished" and status["rounds"] == 1
    feasible = [r for r in rows if r.feasible]
    if feasible:
        assert status["best"]["value"] == min(r.value for r in feasible)
    fleet = json.loads(orch("fleet", "status", "--json", "--db", db_url, cwd=tmp_path).stdout)
    (machine,) = fleet["machines"]
    assert machine["name"] == "local" and machine["reachable"] and machine["state"] == "idle"
    assert machine["gpu_count"] == 0 and machine["gpu_type"] == "no GPU" and machine["cpu_slots"] >= 1
    human = orch("fleet", "status", "--db", db_url, cwd=tmp_path).stdout
    assert "local" in human and "no GPU" in human
