"""What a record write-up needs to reproduce a run: code revision, branch, dirty flag, file checksums."""

from __future__ import annotations

import glob
import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CodeInfo:
    revision: str | None = None
    branch: str | None = None
    dirty: bool | None = None
    checksums: dict[str, str] = field(default_factory=dict)  # relative path -> md5 (what write-ups quote)


def _git(code_dir: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(code_dir), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_info(code_dir: Path, patterns: list[str]) -> CodeInfo:
    info = CodeInfo()
    info.revision = _git(code_dir, "rev-parse", "HEAD")
    if info.revision:
        info.branch = _git(code_dir, "rev-parse", "--abbrev-ref", "HEAD")
        status = _git(code_dir, "status", "--porcelain", "--untracked-files=no")
        info.dirty = bool(status) if status is not None else None
    for pattern in patterns:
        for match in sorted(glob.glob(str(code_dir / pattern), recursive=True)):
            path = Path(match)
            if path.is_file():
                info.checksums[str(path.relative_to(code_dir))] = md5_file(path)
    return info
