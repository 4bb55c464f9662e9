"""Paths of the real logs in ../shared/fixtures/logs (read at test time; tests skip when they are absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
LOGS = SHARED / "fixtures" / "logs"


def log(kind: str, prefix: str) -> Path:
    """The fixture log of `kind` (modded-nanogpt | parameter-golf) whose name starts with `prefix`."""
    folder = LOGS / kind
    matches = sorted(folder.glob(f"{prefix}*")) if folder.is_dir() else []
    if not matches:
        pytest.skip(f"fixture log {kind}/{prefix}* not found under {LOGS.resolve()} (shared fixtures not checked out)")
    return matches[0]
