"""The files a job needs on its machine under `.orch-warm/`, and how they get there.

Every item is content-addressed (its path names its digest), so a file of the item's size at its path is the item:
staging copies only what is missing, once per machine. A data file's bytes are hashed while they are copied and a
copy whose digest is not the study's is never put in place (the error names the source file). The machine checks
the digest again before each trial (entry.py).

`stage_local` is `Launcher.stage` for machines that share the controller's file system (local; slurm, whose workdir
is shared by definition). `missing_argv` and `push_parts` are what the ssh and ray launchers build on: one command
on the machine that lists the missing items, then a stream of each missing file's bytes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..config.errors import OrchError
from .plan import WarmPlan

ENTRY = Path(__file__).with_name("entry.py")
FORK_SERVER = Path(__file__).with_name("forkserver.py")
CHUNK = 8 << 20


class StageError(OrchError):
    """A file could not be staged on a machine (its source is not what the study names, or the copy failed)."""


@dataclass(frozen=True)
class StageItem:
    dest: str  # its path under the machine's .orch-warm folder
    size: int
    sha256: str
    source: str | None = None  # a file on the controller's host ...
    content: bytes | None = None  # ... or these bytes
    what: str = ""  # how a message names it

    def chunks(self) -> Iterator[bytes]:
        if self.content is not None:
            yield self.content
            return
        with open(self.source, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                yield block

    def mismatch(self, digest: str, size: int) -> StageError:
        return StageError(f"data file {self.source} ({self.what}) has sha256 {digest} ({size} bytes) now, not the "
                          f"{self.sha256} the study names (fix: restore the file, or update trainer.data and create the "
                          "study again)")


def _blob(data: bytes, dest: str, what: str) -> StageItem:
    return StageItem(dest=dest, size=len(data), sha256=hashlib.sha256(data).hexdigest(), content=data, what=what)


def _program(path: Path, name: str, what: str) -> StageItem:
    program = path.read_bytes()
    return _blob(program, f"bin/{name}-{hashlib.sha256(program).hexdigest()[:12]}.py", what)


def stage_items(plan: WarmPlan, root: str, keep_vars: tuple[str, ...] = (),
                secret_vars: tuple[str, ...] = ()) -> tuple[list[StageItem], str, str]:
    """(items, the entry program's path on the machine, the plan's path on the machine) of a job's warm plan.
    `keep_vars`: the cache variables the study or the machine sets itself (the entry program leaves those alone);
    `secret_vars`: the names of the job's secrets (kept out of a fork server's environment and name)."""
    import json

    entry = _program(ENTRY, "entry", "entry program")
    server = _program(FORK_SERVER, "forkserver", "fork server") if plan.fork is not None else None
    fork_program = f"{root}/{server.dest}" if server else None
    text = json.dumps({**plan.entry_plan(root, fork_program, secret_vars), "keep_vars": sorted(keep_vars)},
                      sort_keys=True).encode()
    plan_item = _blob(text, f"plans/{hashlib.sha256(text).hexdigest()[:16]}.json", "plan")
    programs = [entry, server] if server else [entry]
    items = programs + [plan_item] + [StageItem(dest=f"data/{f.sha256}", size=f.size, sha256=f.sha256,
                                                source=f.source, what=f.name) for f in plan.data]
    return items, f"{root}/{entry.dest}", f"{root}/{plan_item.dest}"


def stage_local(root: str, items: list[StageItem]) -> None:
    """Copy the missing items into `root` on this host's file system (temp file, digest checked, rename)."""
    for item in items:
        dest = Path(root) / item.dest
        try:
            if dest.stat().st_size == item.size:
                continue
        except OSError:
            pass
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.part-{secrets.token_hex(4)}")
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as out:
                for block in item.chunks():
                    out.write(block)
                    digest.update(block)
                    size += len(block)
            if digest.hexdigest() != item.sha256:
                raise item.mismatch(digest.hexdigest(), size)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


#: lists the items missing on the machine: argv `ROOT DEST SIZE DEST SIZE ...`, one missing DEST a line
MISSING_SCRIPT = ('root=$1; shift; while [ $# -gt 1 ]; do s=$(stat -c %s -- "$root/$1" 2>/dev/null); '
                  '[ "$s" = "$2" ] || echo "$1"; shift 2; done')


def missing_argv(root: str, items: list[StageItem]) -> list[str]:
    argv = ["bash", "-c", MISSING_SCRIPT, "orch-stage", root]
    for item in items:
        argv += [item.dest, str(item.size)]
    return argv


def parse_missing(output: str, items: list[StageItem]) -> list[StageItem]:
    wanted = {line.strip() for line in output.splitlines() if line.strip()}
    return [item for item in items if item.dest in wanted]


def part_path(root: str, item: StageItem) -> str:
    return f"{root}/{item.dest}.part-{secrets.token_hex(4)}"


def push_parts(item: StageItem) -> Iterator[bytes]:
    """The item's bytes, checked against its digest at the end (StageError: the caller removes its partial copy)."""
    digest, size = hashlib.sha256(), 0
    for block in item.chunks():
        digest.update(block)
        size += len(block)
        yield block
    if digest.hexdigest() != item.sha256:
        raise item.mismatch(digest.hexdigest(), size)
