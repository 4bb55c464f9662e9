#!/usr/bin/env python3
"""Parse every training log of public speedrun repositories and count how many parse complete, incomplete, or fail.

Not part of CI (it needs the repositories). Usage::

    python scripts/parse_public_logs.py REPO [REPO ...] [--details] [--json OUT.json]

Each REPO is a bare git directory (e.g. a mirror of github:KellerJordan/modded-nanogpt; files are read from HEAD
with `git cat-file`) or a plain directory (walked). Candidate logs are `*.txt` and `*.log` files, except
`requirements*.txt`. Each is parsed with `orchestrator.parsers.files.parse_log_file(path, "auto")`.

Outcomes: complete / incomplete (parsed, but the log has no official final line; the reason is grouped) /
failed (parse_log_file raised: not a log, unknown format, binary) / unavailable (blob absent from the mirror).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.parsers.files import parse_log_file, parsed_run_to_json  # noqa: E402

_CANDIDATE = re.compile(r"\.(?:txt|log)$")
_SKIP = re.compile(r"(?:^|/)requirements[^/]*\.txt$")


def _is_bare_git(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def _git_candidates(git_dir: Path) -> list[tuple[str, str]]:
    out = subprocess.run(
        ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "-z", "HEAD"], check=True, capture_output=True
    ).stdout.decode("utf-8", errors="replace")
    files = []
    for entry in out.split("\0"):
        if not entry:
            continue
        meta, path = entry.split("\t", 1)
        _mode, kind, sha = meta.split()
        if kind == "blob" and _CANDIDATE.search(path) and not _SKIP.search(path):
            files.append((path, sha))
    return sorted(files)


class _BlobReader:
    """One `git cat-file --batch` process for all blobs of a repository."""

    def __init__(self, git_dir: Path) -> None:
        self.proc = subprocess.Popen(
            ["git", "--git-dir", str(git_dir), "cat-file", "--batch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )

    def read(self, sha: str) -> bytes | None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(sha.encode() + b"\n")
        self.proc.stdin.flush()
        header = self.proc.stdout.readline().split()
        if len(header) < 3 or header[1] != b"blob":
            return None  # "<sha> missing": the mirror lacks this (large) blob
        size = int(header[2])
        data = self.proc.stdout.read(size)
        self.proc.stdout.read(1)  # trailing newline
        return data

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def _repo_name(path: Path) -> str:
    name = path.name
    if name in ("repo", ".git") or name.endswith(".git"):
        name = path.parent.name if name in ("repo", ".git") else name[:-4]
    return name.replace("+", "/")


def _classify(path: str, real_path: Path) -> dict:
    try:
        run = parse_log_file(real_path)
    except ValueError as err:  # LogFileError and its subclasses
        message = str(err).replace(str(real_path), path)
        return {"file": path, "outcome": "failed", "error": message, "error_type": type(err).__name__}
    data = parsed_run_to_json(run, path=path, series=False)
    data["outcome"] = "complete" if run.complete else "incomplete"
    data["points"] = len(run.points)
    return data


def _reason_key(reason: str | None) -> str:
    if not reason:
        return "?"
    return re.sub(r"\d+", "N", reason)


def scan(repo: Path) -> list[dict]:
    results = []
    if _is_bare_git(repo):
        reader = _BlobReader(repo)
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp) / "log"
            for path, sha in _git_candidates(repo):
                data = reader.read(sha)
                if data is None:
                    results.append({"file": path, "outcome": "unavailable", "error": "blob missing from the mirror"})
                    continue
                scratch.write_bytes(data)
                results.append(_classify(path, scratch))
        reader.close()
    else:
        for root, _dirs, names in os.walk(repo):
            for name in sorted(names):
                full = Path(root) / name
                rel = str(full.relative_to(repo))
                if _CANDIDATE.search(rel) and not _SKIP.search(rel):
                    results.append(_classify(rel, full))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repos", nargs="+", type=Path, help="bare git dirs or plain directories")
    parser.add_argument("--details", action="store_true", help="list every failed and incomplete file")
    parser.add_argument("--json", type=Path, help="write one result object per file to this JSON file")
    args = parser.parse_args(argv)

    everything = []
    grand = collections.Counter()
    started = time.perf_counter()
    for repo in args.repos:
        t0 = time.perf_counter()
        results = scan(repo)
        name = _repo_name(repo.resolve())
        for r in results:
            r["repo"] = name
        everything.extend(results)
        counts = collections.Counter(r["outcome"] for r in results)
        grand.update(counts)
        formats = collections.Counter(r.get("format", "-") for r in results if r["outcome"] in ("complete", "incomplete"))
        print(f"{name}: {len(results)} candidate files in {time.perf_counter() - t0:.1f}s: "
              + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("complete", "incomplete", "failed", "unavailable")))
        print("  detected formats: " + ", ".join(f"{k} {v}" for k, v in formats.most_common()))
        reasons = collections.Counter(_reason_key(r.get("reason")) for r in results if r["outcome"] == "incomplete")
        for reason, n in reasons.most_common(8):
            print(f"  incomplete x{n}: {reason[:150]}")
        errors = collections.Counter(
            re.sub(r"\d+", "N", r["error"].split(": ", 1)[-1])[:110] for r in results if r["outcome"] == "failed"
        )
        for error, n in errors.most_common(8):
            print(f"  failed x{n}: {error}")
        if args.details:
            for r in results:
                if r["outcome"] in ("failed", "incomplete", "unavailable"):
                    print(f"    {r['outcome']:11s} {r['file']}: {r.get('error') or r.get('reason')}")
    total = sum(grand.values())
    print(f"TOTAL {total} files in {time.perf_counter() - started:.1f}s: "
          + ", ".join(f"{k} {grand.get(k, 0)}" for k in ("complete", "incomplete", "failed", "unavailable")))
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
