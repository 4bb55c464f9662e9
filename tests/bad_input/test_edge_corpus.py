"""The edge corpus (tests/bad_input/edge.yaml, files in edge_cases/): resource exhaustion, values that used to pass
create and crash run, tracebacks at create, silently accepted nonsense, database URLs and output paths, fleet
fields, and command-line values. Every case runs as its own `orch` process (the real entry point, as a user
runs it) in a workspace holding a database with a finished study, and must end with the expected exit status
(2 unless the case says otherwise), a message with the case's phrases (the field and the fix), no traceback,
the database file byte for byte as it was, and no file or directory created in the workspace (nor at the
paths a case names in `not_created`). One process at a time; most cases take about a second or two.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from tests.conftest import orch, stand_in_study

HERE = Path(__file__).parent
CASES = HERE / "edge_cases"
ENTRIES = yaml.safe_load((HERE / "edge.yaml").read_text())
KINDS = ("resource exhaustion", "values that passed create and crashed run", "tracebacks at create",
         "silently accepted nonsense", "database and files", "fleet", "a wrong option blamed")


def _case_id(entry: dict) -> str:
    if entry.get("case"):
        return f"{entry['case']}:{entry['run'][0]}-{entry['run'][1]}"
    words = [str(a) for a in entry["run"] if not str(a).startswith("{") and "/" not in str(a)]
    return "cli-" + "-".join(words)[:60]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("edge")
    good = stand_in_study(base, max_trials=2, parallel=2, name="good.yaml")
    db_file = base / "orch.db"
    url = f"sqlite:///{db_file}"
    assert orch("study", "create", "s", "--from", str(good), "--db", url, cwd=base).returncode == 0
    result = orch("study", "run", "s", "--db", url, cwd=base)
    assert result.returncode == 0, result.stderr
    connection = sqlite3.connect(db_file)  # fold the WAL into the file: the hash below is of the whole database
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    big = base / "big.yaml"
    big.write_text(good.read_text() + "# padding\n" * (2 * 1024 * 1024 // 10))
    return {"db": url, "db_file": db_file, "good": str(good), "dir": base, "big": str(big)}


def _fill(value: str, values: dict) -> str:
    return str(value).format(**values)


def _database_bytes(db_file: Path) -> str:
    digest = hashlib.sha256(db_file.read_bytes())
    wal = Path(f"{db_file}-wal")
    if wal.exists():
        digest.update(wal.read_bytes())
    return digest.hexdigest()


def _tree(root: Path) -> set[str]:
    """Every path under the workspace and the corpus files, but the workspace database's -wal/-shm (a reader
    may recreate them; the -wal's content is in the hash)."""
    paths = {str(p.relative_to(root)) for p in root.rglob("*") if not p.name.startswith(("orch.db-",))}
    return paths | {str(p) for p in CASES.iterdir()}


def test_the_edge_corpus_covers_every_kind():
    counts = {kind: sum(e["kind"] == kind for e in ENTRIES) for kind in KINDS}
    assert all(count >= 5 for count in counts.values()), counts
    assert {e["kind"] for e in ENTRIES} == set(KINDS)
    used = {e["case"] for e in ENTRIES if e.get("case")}
    assert used == {p.name for p in CASES.iterdir()}, "every file of edge_cases/ has an entry, and the reverse"


@pytest.mark.parametrize("entry", ENTRIES, ids=_case_id)
def test_edge_case(entry, workspace):
    root: Path = workspace["dir"]
    values = {**workspace, "case": str(CASES / entry["case"]) if entry.get("case") else ""}
    args = [_fill(a, values) for a in entry["run"]]
    env = {k: _fill(v, values) for k, v in (entry.get("env") or {}).items()}
    env.setdefault("ORCH_DB", workspace["db"])  # a case without --db must not reach ./orch.db elsewhere
    not_created = [Path(p) for p in entry.get("not_created", [])]
    for path in not_created:
        assert not path.exists(), f"{path} exists before the case ran"
    before, tree = _database_bytes(workspace["db_file"]), _tree(root)
    try:
        result = orch(*args, cwd=root, env=env, timeout=60)
    finally:
        created = [p for p in not_created if p.exists()]
        for path in created:  # leave no litter behind a failing case
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    output = result.stdout + result.stderr
    expected_exit = entry.get("exit", 2)
    if expected_exit is None:
        assert result.returncode != 0, output
    else:
        assert result.returncode == expected_exit, output
    assert "Traceback" not in output, output
    for phrase in entry["expect"]:
        assert phrase in output, f"{phrase!r} not in {output!r}"
    for phrase in entry.get("absent", []):
        assert phrase not in output, f"{phrase!r} printed: {output!r}"
    assert _database_bytes(workspace["db_file"]) == before, "the database file changed"
    assert _tree(root) == tree, f"files created or removed: {sorted(_tree(root) ^ tree)}"
    assert not created, f"created outside the workspace: {created}"
    assert not os.path.exists(root / "pwned"), "a shell ran a value"
