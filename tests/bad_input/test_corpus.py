"""The bad-input corpus (tests/bad_input/expectations.yaml, files in cases/): every case ends with one clear
message (naming the file, the line and the field where there is one, and the fix), a non-zero exit, no
traceback, and the results database exactly as it was: every table, Optuna's included, dumped before and after.

The cases run through `orchestrator.cli.main.main` in this process (the same code path as the `orch` command,
about 20 times faster than a process per case); one test runs a few of them as separate processes as well.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli.main import main
from tests.conftest import dump_database, orch, stand_in_study

HERE = Path(__file__).parent
CASES = HERE / "cases"
EXPECTATIONS = yaml.safe_load((HERE / "expectations.yaml").read_text())
FLEET = "machines:\n  - name: box1\n    launcher: local\n    gpus: 8\n    cpu_slots: 2\n"


def _case_id(entry: dict) -> str:
    words = entry.get("case") or "cli-" + "-".join(str(a) for a in entry["run"] if "{" not in str(a))
    return f"{words}:{'-'.join(str(a) for a in entry['run'][:2])}"


def _workspace(tmp_path_factory, url: str) -> dict:
    """A database holding a finished study `s`, a valid study file and a valid fleet file."""
    base = tmp_path_factory.mktemp("corpus")
    good = stand_in_study(base, max_trials=2, parallel=2, name="good.yaml")
    fleet = base / "fleet.yaml"
    fleet.write_text(FLEET)
    assert orch("study", "create", "s", "--from", str(good), "--db", url, cwd=base).returncode == 0
    result = orch("study", "run", "s", "--db", url, cwd=base)
    assert result.returncode == 0, result.stderr
    return {"db": url, "good": str(good), "fleet": str(fleet), "cases": str(CASES), "dir": base}


@pytest.fixture(scope="module")
def sqlite_workspace(tmp_path_factory):
    return _workspace(tmp_path_factory, f"sqlite:///{tmp_path_factory.mktemp('corpus-db') / 'orch.db'}")


@pytest.fixture(scope="module")
def postgres_workspace(tmp_path_factory, postgres_server):
    return _workspace(tmp_path_factory, postgres_server.create_database())


def _fill(args: list, values: dict) -> list[str]:
    return [str(a).format(**values) for a in args]


def _run_case(entry: dict, workspace: dict, capsys, monkeypatch) -> None:
    monkeypatch.chdir(workspace["dir"])
    values = {**workspace, "case": str(CASES / entry["case"]) if entry.get("case") else ""}
    if entry.get("case"):
        assert Path(values["case"]).exists(), f"corpus file missing: {entry['case']}"
    if entry.get("setup"):
        assert main(_fill(entry["setup"], values)) == 0, capsys.readouterr()
        capsys.readouterr()
    before = dump_database(workspace["db"])
    code = main(_fill(entry["run"], values))
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert code == entry.get("exit", 2), output
    assert "Traceback" not in output
    for phrase in entry["expect"]:
        assert phrase in output, f"{phrase!r} not in {output!r}"
    assert dump_database(workspace["db"]) == before, "the database changed"


def test_the_corpus_is_big_enough():
    assert len(EXPECTATIONS) >= 40
    used = {e["case"] for e in EXPECTATIONS if e.get("case")}
    assert used == {p.name for p in CASES.iterdir()}, "every file of cases/ has an expectation, and the reverse"


@pytest.mark.parametrize("entry", EXPECTATIONS, ids=_case_id)
def test_bad_input_case(entry, sqlite_workspace, capsys, monkeypatch):
    _run_case(entry, sqlite_workspace, capsys, monkeypatch)


@pytest.mark.postgres
@pytest.mark.parametrize("entry", [e for e in EXPECTATIONS if e.get("postgres")], ids=_case_id)
def test_bad_input_case_on_postgres(entry, postgres_workspace, capsys, monkeypatch):
    _run_case(entry, postgres_workspace, capsys, monkeypatch)


def test_cases_as_separate_processes(sqlite_workspace):
    """The `orch` command itself: the same message, exit status and no traceback."""
    for name, args, phrase in [
        ("study_unknown_top_field.yaml", ["study", "create", "t", "--from", "{case}", "--db", "{db}"], "budgett: unknown field"),
        ("log_truncated.log.gz", ["parse-log", "{case}"], "truncated or corrupt"),
        (None, ["study", "run"], "Missing argument"),
    ]:
        values = {**sqlite_workspace, "case": str(CASES / name) if name else ""}
        result = orch(*_fill(args, values), cwd=sqlite_workspace["dir"])
        assert result.returncode == 2 and phrase in result.stderr and "Traceback" not in result.stderr, result.stderr
