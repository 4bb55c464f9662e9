"""From a study to the warm plan of its jobs: the code digest that keys the caches and the data files to stage.

`warm_plan(spec, spec_dir, checksums)` is what `jobs.build_job` puts on a JobSpec (None when the study turns warm
machines off). `data_problems(spec, spec_dir)` is the create-time check of `trainer.data`: every file exists and has
the sha256 the study (or its manifest) names; each problem names the file and the fix, and `orch study create`
writes nothing when there is one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..config.errors import OrchError
from ..config.study import DataSpec, StudySpec

#: the most recently used cache keys a machine keeps (older ones are removed by the entry program)
KEEP_KEYS = 8
_MANIFEST_LINE = re.compile(r"^(?P<sha>[0-9a-f]{64}) [ *](?P<path>\S(?:.*\S)?)\s*$")


class DataError(OrchError):
    """A data file of a study that is missing or cannot be read; the message names the file and the fix (a run
    stops with it: every trial would need the file)."""


@dataclass(frozen=True)
class StagedFile:
    """One data file of a study: its source on the controller's host and where the trainer finds it."""

    name: str  # its path under the plan's link folder in the trial directory
    sha256: str
    size: int
    source: str  # absolute path on the controller's host


@dataclass(frozen=True)
class ForkPlan:
    """The study's `trainer.fork_server`: what the machine's fork server imports, and how long it waits idle."""

    preload: tuple[str, ...]
    idle_s: float


@dataclass(frozen=True)
class WarmPlan:
    code: str  # digest of the training files' checksums (what the trial row stores), part of the cache key
    data: tuple[StagedFile, ...] = ()
    link: str = "data"
    keep: int = KEEP_KEYS
    checksums: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    fork: ForkPlan | None = None

    def entry_plan(self, root: str, fork_program: str | None = None, secret_vars: tuple[str, ...] = ()) -> dict:
        """The plan the entry program reads on the machine (paths there; no controller-side path). `fork_program`:
        the fork server's staged file, when this job's trainer is to be forked (None: started as before);
        `secret_vars`: the names of the job's secrets, kept out of the server's environment and name."""
        plan = {"v": 1, "root": root, "code": self.code, "link": self.link, "keep": self.keep,
                "data": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in self.data]}
        if self.fork is not None and fork_program:
            plan["fork"] = {"program": fork_program, "preload": list(self.fork.preload), "idle_s": self.fork.idle_s,
                            "secret_vars": sorted(secret_vars)}
        return plan


def code_digest(checksums: dict[str, str]) -> str:
    """The training files' checksums as one digest: a changed file, an added or a removed one changes it."""
    return hashlib.sha256(json.dumps(sorted(checksums.items())).encode()).hexdigest()[:16]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _manifest(path: str, _mtime_ns: int, _size: int) -> tuple[tuple[str, str], ...]:
    """(sha256, relative path) of each line of a sha256sum file; DataError naming the line otherwise."""
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            match = _MANIFEST_LINE.match(line.rstrip("\n"))
            if not match:
                raise DataError(f"manifest {path} line {number}: {line.strip()[:80]!r} is not `SHA256  PATH` "
                                "(fix: write it as `sha256sum` prints it, a path relative to the manifest's folder)")
            rel = match["path"]
            if rel.startswith("/") or ".." in rel.split("/"):
                raise DataError(f"manifest {path} line {number}: {rel!r} must be a path inside the manifest's folder "
                                "(fix: list files relative to it, without `..`)")
            out.append((match["sha"], rel))
    if not out:
        raise DataError(f"manifest {path} lists no file (fix: one `SHA256  PATH` line per data file)")
    return tuple(out)


def data_entries(data: DataSpec, spec_dir: Path) -> list[tuple[str, str, Path, tuple]]:
    """(name under link, sha256, source path, the study field naming it) of every data file of `data`."""
    if data.manifest:
        manifest = (spec_dir / data.manifest).resolve()
        try:
            stat = manifest.stat()
        except OSError as exc:
            raise DataError(f"manifest {manifest} cannot be read: {exc.strerror or exc} (fix: build the data first, "
                            "or correct trainer.data.manifest)") from None
        lines = _manifest(str(manifest), stat.st_mtime_ns, stat.st_size)
        return [(rel, sha, manifest.parent / rel, ("trainer", "data", "manifest")) for sha, rel in lines]
    return [(f.name or Path(f.path).name, f.sha256, (spec_dir / f.path).resolve(), ("trainer", "data", "files", i))
            for i, f in enumerate(data.files)]


@lru_cache(maxsize=4096)
def _size(path: str, _mtime_ns: int) -> int:
    return os.stat(path).st_size


def warm_plan(spec: StudySpec, spec_dir: Path, checksums: dict[str, str]) -> WarmPlan | None:
    """The warm plan of the study's jobs; None when `trainer.warm` is off. Data sources are not hashed here (the
    staging step hashes what it copies and the machine checks what it has): a source changed since the study
    was created is refused where it is staged, with its name."""
    if not spec.trainer.warm:
        return None
    files: list[StagedFile] = []
    data = spec.trainer.data
    if data is not None:
        for name, sha, source, _ in data_entries(data, spec_dir):
            try:
                size = _size(str(source), source.stat().st_mtime_ns)
            except OSError as exc:
                raise DataError(f"data file {source} ({name}) cannot be read: {exc.strerror or exc} (fix: restore it, "
                                "or correct trainer.data)") from None
            files.append(StagedFile(name=name, sha256=sha, size=size, source=str(source)))
    # without `trainer.files` nothing says which code the caches hold: the command stands in for it (a changed
    # script then keeps its key; docs/fleet.md asks for trainer.files)
    code = code_digest(checksums) if checksums else code_digest({"command": json.dumps(spec.trainer.command)})
    fork = spec.trainer.fork_server
    return WarmPlan(code=code, data=tuple(files), link=data.link if data else "data", checksums=dict(checksums),
                    fork=None if fork is None else ForkPlan(preload=tuple(fork.preload), idle_s=fork.idle_s))


def data_problems(spec: StudySpec, spec_dir: Path) -> list[tuple[tuple, str, str]]:
    """(study field, problem, fix) for each data file that is missing or whose sha256 differs from the study's."""
    data = spec.trainer.data
    if data is None:
        return []
    try:
        entries = data_entries(data, spec_dir)
    except DataError as exc:
        problem, _, fix = str(exc).rpartition(" (fix: ")
        return [(("trainer", "data", "manifest"), problem, fix.rstrip(")"))]
    problems = []
    for name, sha, source, where in entries:
        if not source.is_file():
            problems.append((where, f"data file {source} ({name}) does not exist",
                             "build or copy the data there first, or correct the path"))
            continue
        actual = sha256_file(source)
        if actual != sha:
            problems.append((where, f"data file {source} ({name}) has sha256 {actual}, not {sha}",
                             "rebuild the file, or put its real digest in the study (or manifest) if it changed on "
                             "purpose"))
    return problems
