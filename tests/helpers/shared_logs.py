"""Paths of the real trainer logs in tests/fixtures/logs (copies of public records; tests/fixtures/README.md)."""

from __future__ import annotations

from pathlib import Path

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "logs"


def log(kind: str, prefix: str) -> Path:
    """The fixture log of `kind` (modded-nanogpt | parameter-golf) whose name starts with `prefix`."""
    folder = LOGS / kind
    matches = sorted(folder.glob(f"{prefix}*")) if folder.is_dir() else []
    if not matches:
        raise FileNotFoundError(f"no fixture log {kind}/{prefix}* in {LOGS} (see tests/fixtures/README.md)")
    return matches[0]
