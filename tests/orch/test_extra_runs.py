"""`orch study confirm | early-exit | baseline` as a user runs them (separate processes, the stand-in trainer, real
SQLite files and a real PostgreSQL server): runs land with their kind, beyond the budget, spread over slots; a
SIGKILLed batch resumes without queueing more; bad arguments leave the database untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from sqlalchemy import select

from db import BatchRow, Database
from orchestrator.config.study import load_study_text, early_exit_templates
from orchestrator.cli.main import main
from orchestrator.launchers.local import process_alive
from tests.conftest import REPO, dump_database, orch, stand_in_study, wait_for

from ._checks import assert_agrees_with_optuna, rows_of



def _attrs(db_url: str, name: str = "s") -> dict[int, dict]:
    study = optuna.load_study(study_name=name, storage=db_url)
    return {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}


def _kinds(db_url: str) -> dict[int, str]:
    return {n: a.get("kind", "search") for n, a in _attrs(db_url).items()}


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _study(db_url: str, tmp_path: Path, **kwargs) -> None:
    _ok(orch("study", "create", "s", "--from", str(stand_in_study(tmp_path, **kwargs)), "--db", db_url, cwd=tmp_path))


def test_confirm_runs_the_best_variants_beyond_the_budget_on_distinct_slots(db_url, tmp_path):
    # every run hits (threshold 3.30): the ranking is the fastest mean time, i.e. the largest stage1
    _study(db_url, tmp_path, max_trials=4, parallel=2, threshold=3.30)
    _ok(orch("study", "run", "s", "--db", db_url, "--max-new", "2", cwd=tmp_path))
    db = Database(db_url)
    search = rows_of(db, "s")
    ranked = sorted(search, key=lambda r: r.value)
    result = _ok(orch("study", "confirm", "s", "--top", "2", "--repeats", "2", "--db", db_url, "--json", cwd=tmp_path))
    summary = json.loads(result.stdout)
    assert summary["kind"] == "confirmation" and summary["state"] == "done" and not summary["resumed"]
    kinds = _kinds(db_url)
    confirmation = [r for r in rows_of(db, "s") if kinds[r.number] == "confirmation"]
    assert len(confirmation) == 4 and all(r.state == "complete" for r in confirmation)
    # the two best variants, each run twice, each on both CPU slots
    assert {r.variant for r in confirmation} == {ranked[0].variant, ranked[1].variant}
    for variant in (ranked[0].variant, ranked[1].variant):
        runs = [r for r in confirmation if r.variant == variant]
        assert len(runs) == 2 and len({(r.machine, r.slot) for r in runs}) == 2
    assert [v["batch"]["runs"] for v in summary["variants"]] == [2, 2]
    best = summary["variants"][0]
    assert best["params"] == {k: ranked[0].params[k] for k in ("stage1", "stage2")}
    assert best["all_runs"]["runs"] == 3 and best["batch"]["hit_rate"] == 1.0
    assert best["batch"]["p_value"] is not None and 0 <= best["batch"]["p_value"] <= 1
    # extra runs do not eat the search budget: the search still gets its 4 trials
    _ok(orch("study", "run", "s", "--db", db_url, cwd=tmp_path))
    rows = assert_agrees_with_optuna(db, "s")
    kinds = _kinds(db_url)
    assert sum(kinds[r.number] == "search" for r in rows) == 4 and len(rows) == 8
    text = _ok(orch("study", "confirm", "s", "--top", "1", "--repeats", "1", "--db", db_url, "--plain", cwd=tmp_path))
    assert "Confirmation runs of study 's'" in text.stdout and "| variant | runs | hit rate |" in text.stdout
    md = _ok(orch("export", "s", "--db", db_url, cwd=tmp_path)).stdout
    section = md.split("## Confirmation runs", 1)[1].split("## ", 1)[0]
    for row in confirmation:
        assert f"| {row.number} |" in section


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_a_sigkilled_confirm_resumes_without_queueing_more(db_url, tmp_path):
    marker = tmp_path / "starts.txt"
    _study(db_url, tmp_path, extra_args=["--wall-s", "1.5", "--marker", str(marker)], max_trials=2, parallel=2,
           threshold=3.30)
    _ok(orch("study", "run", "s", "--db", db_url, cwd=tmp_path))
    db = Database(db_url)
    confirm = ["study", "confirm", "s", "--top", "1", "--repeats", "4", "--db", db_url, "--plain"]
    first = _start(confirm, tmp_path)
    wait_for(lambda: sum(r.state == "running" for r in rows_of(db, "s")) == 2, 60, "2 confirmation runs running")
    first.kill()
    first.wait(timeout=10)
    killed = [r for r in rows_of(db, "s") if r.state == "running"]
    wait_for(lambda: not any(process_alive(r.pid, r.pid_start) for r in killed), 10, "orphaned jobs to end")

    # another batch while this one is open: refused, nothing written
    before = dump_database(db_url)
    other = orch("study", "confirm", "s", "--top", "1", "--repeats", "2", "--db", db_url, cwd=tmp_path)
    assert other.returncode == 2 and "unfinished confirmation batch" in other.stderr and "--repeats 4" in other.stderr
    assert "Traceback" not in other.stderr and dump_database(db_url) == before
    # the search controller recovers the killed runs but leaves the batch's queue alone (its budget is spent)
    plain = _ok(orch("study", "run", "s", "--db", db_url, "--plain", cwd=tmp_path))
    assert "recovery: trial" in plain.stdout and "started" not in plain.stdout

    resumed = _ok(orch(*confirm[:-1], "--json", cwd=tmp_path, timeout=120))
    summary = json.loads(resumed.stdout)
    assert summary["resumed"] and summary["state"] == "done"
    rows = assert_agrees_with_optuna(db, "s")
    attrs = _attrs(db_url)
    extra = [r for r in rows if attrs[r.number].get("kind") == "confirmation"]
    complete = [r for r in extra if r.state == "complete"]
    assert sorted(attrs[r.number]["batch_index"] for r in complete) == [0, 1, 2, 3]  # each planned run once
    lost = [r for r in extra if r.state == "lost"]
    assert {r.number for r in lost} == {r.number for r in killed}
    retries = {r.retry_of: r for r in extra if r.retry_of is not None}
    for row in lost:
        assert retries[row.number].state == "complete"
        assert attrs[retries[row.number].number]["batch_index"] == attrs[row.number]["batch_index"]
    with db.session() as s:
        assert [(b.kind, b.state) for b in s.scalars(select(BatchRow))] == [("confirmation", "done")]
    started = [int(line.split()[0]) for line in marker.read_text().splitlines()]
    assert len(started) == len(set(started)) and set(started) <= {r.pid for r in rows if r.pid is not None}


def test_early_exit_records_the_exit_step_and_time(db_url, tmp_path):
    _study(db_url, tmp_path, extra_args=["--val-every", "5"], max_trials=2, parallel=2, threshold=3.26)
    db = Database(db_url)
    # stage1 = 0.5: final val_loss ~3.2625 at step 100, then it keeps falling: the target (the study's 3.26) is met later
    result = _ok(orch("study", "early-exit", "s", "--variant", "stage1=0.5,stage2=0.3", "--max-steps", "400",
                      "--runs", "2", "--db", db_url, "--json", cwd=tmp_path))
    summary = json.loads(result.stdout)
    kinds = _kinds(db_url)
    runs = [r for r in assert_agrees_with_optuna(db, "s") if kinds[r.number] == "early_exit"]
    assert len(runs) == 2
    for row in runs:
        assert row.command[-4:] == ["--early-exit-at", "3.26", "--max-steps", "400"]
        assert row.state == "complete" and row.exit_reason == "early_exit" and row.feasible
        assert 100 < row.metrics["steps"] < 400 and row.metrics["val_loss"] <= 3.26
        assert row.value == pytest.approx(row.metrics["train_time_ms"] / 1000)
    assert [r["steps"] for r in summary["runs"]] == [r.metrics["steps"] for r in runs]
    assert {r["exit_reason"] for r in summary["runs"]} == {"early_exit"}
    md = _ok(orch("export", "s", "--db", db_url, cwd=tmp_path)).stdout
    section = md.split("## Early-exit analysis", 1)[1].split("## ", 1)[0]
    steps = sorted(int(r.metrics["steps"]) for r in runs)
    assert "exit step " + (str(steps[0]) if steps[0] == steps[-1] else f"{steps[0]} to {steps[-1]}") in section
    assert "| steps |" in section


def test_early_exit_templates_from_the_study_file(sqlite_url, tmp_path):
    """A study that says how its trainer exits (here: the target through an env var) gets exactly that."""
    path = stand_in_study(tmp_path, max_trials=1, parallel=1, threshold=3.30)
    path.write_text(path.read_text().replace("  log_format: orch\n", "  log_format: orch\n  early_exit:\n"
                                             "    flags: {--max-steps: '{max_steps}'}\n"
                                             "    env: {TRAINER_EARLY_EXIT_AT: '{target:.3f}'}\n"))
    _ok(orch("study", "create", "s", "--from", str(path), "--db", sqlite_url, cwd=tmp_path))
    _ok(orch("study", "run", "s", "--db", sqlite_url, cwd=tmp_path))
    _ok(orch("study", "early-exit", "s", "--variant", "#0", "--max-steps", "300", "--runs", "1", "--db", sqlite_url,
             cwd=tmp_path))
    row = rows_of(Database(sqlite_url), "s")[-1]
    assert row.env["TRAINER_EARLY_EXIT_AT"] == "3.300" and row.command[-2:] == ["--max-steps", "300"]
    assert "--early-exit-at" not in row.command and row.exit_reason == "early_exit"


def test_early_exit_settings_are_checked_at_the_edge(tmp_path):
    base = stand_in_study(tmp_path).read_text()
    spec, _ = load_study_text(base)
    assert early_exit_templates(spec).flags == {"--early-exit-at": "{target}", "--max-steps": "{max_steps}"}
    other, _ = load_study_text(base.replace("log_format: orch", "log_format: modded-nanogpt"))
    assert early_exit_templates(other) is None  # another trainer: the study must say how
    bad = {"    flags: {--max-steps: '{steps}'}\n": "study.yaml:9: trainer.early_exit.flags.--max-steps: template "
                                                      "references unknown name 'steps'",
           "    flags: {max-steps: '{max_steps}'}\n": "'max-steps' is not a command-line flag",
           "    env: {}\n": "early_exit tells the trainer nothing"}
    from orchestrator.config.errors import ConfigError

    for block, message in bad.items():
        text = base.replace("  log_format: orch\n", "  log_format: orch\n  early_exit:\n" + block)
        with pytest.raises(ConfigError) as err:
            load_study_text(text, "study.yaml")
        assert message in str(err.value)


def test_baseline_runs_a_fixed_variant_before_the_search(db_url, tmp_path):
    _study(db_url, tmp_path, max_trials=2, parallel=2)
    _ok(orch("study", "baseline", "s", "--params", "stage1=0.36, stage2=0.3", "--repeats", "3", "--db", db_url,
             cwd=tmp_path))
    db = Database(db_url)
    rows = assert_agrees_with_optuna(db, "s")
    assert [_kinds(db_url)[r.number] for r in rows] == ["baseline"] * 3
    assert {(r.params["stage1"], r.params["stage2"], round(r.params["stage3"], 9)) for r in rows} == {(0.36, 0.3, 0.34)}
    assert len({r.metrics["val_loss"] for r in rows}) == 3  # distinct seeds
    with db.session() as s:
        from db import StudyRow
        assert s.scalar(select(StudyRow.status).where(StudyRow.name == "s")) == "created"
    _ok(orch("study", "run", "s", "--db", db_url, cwd=tmp_path))
    rows = assert_agrees_with_optuna(db, "s")
    assert len(rows) == 5  # the search's whole budget on top of the baseline
    md = _ok(orch("export", "s", "--db", db_url, cwd=tmp_path)).stdout
    assert "baseline = the run marked baseline" in md and "0.36 / 0.3 / 0.34" in md.split("## Variants")[0]


def test_bad_arguments_fail_cleanly_and_leave_the_database_unchanged(db_url, tmp_path, capsys):
    _study(db_url, tmp_path, max_trials=2, parallel=2, threshold=3.30)
    _ok(orch("study", "run", "s", "--db", db_url, cwd=tmp_path))
    cases = [
        (["confirm", "s", "--top", "3", "--repeats", "2"], "--top: 3 variants asked, but only 2 of the study's 2"),
        (["confirm", "nope", "--top", "1", "--repeats", "2"], "no study named 'nope'"),
        (["confirm", "s", "--top", "0", "--repeats", "2"], "Invalid value for '--top'"),
        (["baseline", "s", "--params", "stage1=0.7,stage2=0.2", "--repeats", "1"], "stage1=0.7 is outside its range (0.2..0.6)"),
        (["baseline", "s", "--params", "stage1=0.3,lr=1", "--repeats", "1"], "'lr' is not a parameter of the study"),
        (["baseline", "s", "--params", "stage1=0.3", "--repeats", "1"], "no value for stage2"),
        (["baseline", "s", "--params", "stage1=0.301,stage2=0.2", "--repeats", "1"], "not on the study's grid"),
        (["baseline", "s", "--params", "stage1=abc,stage2=0.2", "--repeats", "1"], "stage1=abc is not a number"),
        (["baseline", "s", "--params", "stage1=0.3,stage3=0.2", "--repeats", "1"], "stage3 is derived"),
        (["early-exit", "s", "--variant", "#99", "--max-steps", "200", "--runs", "1"], "no valid trial #99 (its trials are 0..1)"),
        (["early-exit", "s", "--variant", "worst", "--max-steps", "200", "--runs", "1"], "'worst' names no variant"),
        (["early-exit", "s", "--variant", "best", "--max-steps", "0", "--runs", "1"], "Invalid value for '--max-steps'"),
    ]
    before = dump_database(db_url)
    for args, message in cases:  # in this process (the CLI's own entry point): a dozen interpreter starts saved
        code = main(["study", *args, "--db", db_url])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    assert dump_database(db_url) == before
