"""Shared parts of the fault-injection suite: a controller started as a user starts it, and the ssh machines
of tests/fleet. The `figures` recorder (docs/reliability.md is made from what the tests measure) is in
tests/conftest.py, so fault tests elsewhere (tests/fleet/test_netns.py, fault 2b) record too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from tests.conftest import REPO
from tests.fleet.conftest import ssh_lab  # noqa: F401 - the loopback sshd machines (fault 2)


def backend(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite") else "postgresql"


def start_controller(db_url: str, cwd: Path, *extra: str, name: str = "s", env: dict | None = None,
                     stdout=subprocess.PIPE) -> subprocess.Popen:
    """`orch study run NAME` in its own process, as a user starts it."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", "study", "run", name, "--db", db_url,
                             "--plain", *extra], cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


