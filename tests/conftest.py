"""Shared fixtures: results databases on a real SQLite file and on a real PostgreSQL server that the
test session starts (initdb + pg_ctl on a free loopback port), and the study files the tests use."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: what the controller's tests import beyond torch; the GPU machines carry torch and triton without these
CONTROLLER_DEPS = ("sqlalchemy", "optuna", "pydantic", "typer", "yaml", "paramiko")
#: test folders that need only torch/triton (the GPU tests live here)
TORCH_ONLY = {"kernels", "trainer"}
_MISSING_DEPS = [m for m in CONTROLLER_DEPS if importlib.util.find_spec(m) is None]


def _top_name(path) -> str | None:
    """The folder (or file) directly under tests/ that holds `path`; None outside tests/ or for tests/ itself."""
    path = Path(path).resolve()
    parts = path.relative_to(REPO / "tests").parts if path.is_relative_to(REPO / "tests") else ()
    return parts[0] if parts else None


def pytest_ignore_collect(collection_path, config):
    """On a machine without the controller's dependencies (the GPU machines), collect only the trainer and
    kernel tests, so `python -m pytest -m gpu` from the project root runs the GPU tests there instead of
    failing at collection. Everywhere else (CI, a developer's venv) nothing is ignored."""
    top = _top_name(collection_path)
    if not _MISSING_DEPS or top is None:
        return None
    return True if top not in TORCH_ONLY else None


#: tests that start real daemons (sshd, Ray, PostgreSQL outages, Slurm, podman, network namespaces) or hold a
#: wall-clock bound: under `pytest -n N --dist loadgroup` (scripts/test.sh) they run one at a time on one worker, as
#: without xdist, while the rest (parsers, samplers, kernels, exports, ...) spread over the other workers
SERIAL = {"fleet", "fault", "claims", "liveness", "orch", "trainer", "test_bench_dispatch.py", "test_system_packages.py"}


def pytest_collection_modifyitems(config, items):
    serial = pytest.mark.xdist_group("serial")
    for item in items:
        if _top_name(item.path) in SERIAL:
            item.add_marker(serial)


STAND_IN = REPO / "tests" / "helpers" / "stand_in_trainer.py"
PG_BIN_DIRS = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin"]


def _pg_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in PG_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temp dir; run as user `postgres` when the tests run as root."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
        # outside pytest's tmp tree, which is private to root: the server runs as user postgres
        self.base = Path(tempfile.mkdtemp(prefix="orch-pg-"))
        self.dir = self.base / "pgdata"
        self.port = _free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.base, "postgres")
        self.user = "orch"

    def _run(self, *argv: str) -> None:
        subprocess.run([*self.as_user, *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(self.initdb, "-D", str(self.dir), "-U", self.user, "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.pg_ctl, "-D", str(self.dir), "-o", options, "-l", str(self.dir / "server.log"), "-w", "start")

    def stop(self) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.dir), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A fresh, empty results database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orch.db'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'orch.db'}"


def stand_in_study(tmp_path: Path, *, extra_args: list[str] | None = None, max_trials: int = 6, parallel: int = 2,
                   repeats: int = 1, sampler: str = "random", timeout_s: float = 60, retries: int = 2,
                   threshold: float = 3.24, dispatch: str = "rounds", name: str = "study.yaml") -> Path:
    """Write a study file whose trainer is tests/helpers/stand_in_trainer.py."""
    import yaml

    command = ["{python}", str(STAND_IN), "--steps", "100", *(extra_args or [])]
    spec = {
        "trainer": {"command": command, "log_format": "orch"},
        "parameters": {"stage1": {"type": "float", "low": 0.2, "high": 0.6, "step": 0.02},
                       "stage2": {"type": "float", "low": 0.1, "high": 0.34, "step": 0.02}},
        "derived": {"stage3": {"expr": "1 - stage1 - stage2", "min": 0.05}},
        "arguments": {"flags": {"--stage-durations": "{stage1:.4f},{stage2:.4f},{stage3:.4f}", "--seed": "{seed}"}},
        "objective": {"minimize": "train_time_s", "subject_to": [f"val_loss <= {threshold}"]},
        "sampler": {"name": sampler, "seed": 0},
        "budget": {"max_trials": max_trials, "parallel": parallel, "dispatch": dispatch},
        "repeats": repeats, "timeout_s": timeout_s, "retries": retries,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def orch(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the `orch` CLI as a user would: a separate process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# -- figures of the fault-injection tests (docs/reliability.md) -----------------------------------------------
# Each fault test records one row per fault and database with `figures.record(...)`: the rows go, one JSON object
# a line, to $ORCH_RELIABILITY_OUT when set (bench/reliability.py sets it and renders the table), else to
# `reliability.jsonl` in pytest's base temp directory. Fields: fault (1, 2a, 2b, 3, 4a, ...), database, injected,
# behaviour, recover_s (None when nothing needed recovering), recover_what, lost, duplicates.
class Figures:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, fault: str, database: str, **fields) -> None:
        row = {"fault": fault, "database": database, **fields}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def figures(tmp_path_factory) -> Figures:
    out = os.environ.get("ORCH_RELIABILITY_OUT")
    return Figures(Path(out) if out else tmp_path_factory.getbasetemp() / "reliability.jsonl")


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` is still there (a job's group after a kill)."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def dump_database(url: str) -> list:
    """Every row of every table (ours and Optuna's), sorted: equal dumps mean an untouched database."""
    from sqlalchemy import inspect, text

    from db import Database

    db = Database(url, create=False)
    out = []
    with db.engine.connect() as conn:
        for table in sorted(inspect(conn).get_table_names()):
            out.append((table, sorted(map(repr, conn.execute(text(f'SELECT * FROM "{table}"')).all()))))
    db.dispose()
    return out


def wait_for(predicate, timeout: float, what: str, every: float = 0.05):
    """Poll `predicate` until it returns something true; its value is returned (AssertionError at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
