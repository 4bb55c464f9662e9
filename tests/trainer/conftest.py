"""Shared fixtures: one byte-level dataset per test session, and a helper that runs the trainer CLI."""

import os
import subprocess
import sys

import pytest

from _trainer_cli import ROOT, parse_metrics


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("trainer-data")
    from trainer.data import ensure_stdlib_bytes

    ensure_stdlib_bytes(str(d))
    return str(d)


@pytest.fixture
def run_trainer(data_dir):
    def run(*args, env=None, timeout=120):
        e = {k: v for k, v in os.environ.items() if not k.startswith("TRAINER_")}
        e.update(OMP_NUM_THREADS="1", TRAINER_DATA_DIR=data_dir, PYTHONPATH=str(ROOT))
        e.update(env or {})
        p = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, env=e, capture_output=True,
                           text=True, timeout=timeout)
        p.metrics = parse_metrics(p.stdout)
        return p

    return run
