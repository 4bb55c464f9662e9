"""What the trainer tests share besides fixtures: the repository root and the reader of `@@metrics` lines. A module
of its own name, so a test imports it as itself: `from conftest import ...` finds whichever tests folder's conftest
was imported first in a run (tests/kernels has one too)."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse_metrics(stdout: str) -> list[dict]:
    return [json.loads(line[len("@@metrics "):]) for line in stdout.splitlines() if line.startswith("@@metrics ")]
