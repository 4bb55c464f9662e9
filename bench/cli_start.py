"""How long an `orch` command takes from process start to exit, this checkout against an anchor revision, side by side.

Every test that runs `orch` as a user does, and every user's `orch study status`, pays the command's start: the
interpreter and the modules it imports. The anchor's tree is `git archive`d into a temporary directory; each
revision gets its own SQLite database with one finished stand-in study (made by its own `orch study create` and
`study run`), then the commands below run alternately (anchor, this checkout, anchor, ...) so that drift in the
machine's load falls on both. Reported: the median and the fastest of --runs runs per command, and the ratio of the
medians. Usage:

    .venv/bin/python bench/cli_start.py --anchor e2b31da --runs 15 --out docs/cli-start.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import stand_in_study  # noqa: E402  (the stand-in study the tests use)

COMMANDS = [["study", "list"], ["study", "status", "s"], ["export", "s", "--format", "csv"], ["--help"]]


def _tree(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _orch(tree: Path, args: list[str], db: str) -> float:
    """Seconds `orch ARGS --db DB` of this tree took, start to exit (its own packages before the installed checkout)."""
    began = time.perf_counter()
    extra = [] if args == ["--help"] else ["--db", db]
    subprocess.run([sys.executable, "-m", "orchestrator", *args, *extra], cwd=tree, check=True,
                   env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True)
    return time.perf_counter() - began


def _prepare(tree: Path, work: Path) -> str:
    work.mkdir(parents=True)
    study = stand_in_study(work, max_trials=2, parallel=2)
    db = f"sqlite:///{work / 'orch.db'}"
    for args in (["study", "create", "s", "--from", str(study)], ["study", "run", "s", "--plain"]):
        _orch(tree, args, db)
    return db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--anchor", required=True, help="git revision to compare against (e.g. e2b31da)")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", type=Path, help="write the table as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-start-") as tmp:
        tmp = Path(tmp)
        trees = {"anchor": _tree(args.anchor, tmp / "anchor"), "this checkout": ROOT}
        dbs = {name: _prepare(tree, tmp / f"work-{i}") for i, (name, tree) in enumerate(trees.items())}
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.runs):
            for command in COMMANDS:
                for name, tree in trees.items():
                    times.setdefault((" ".join(command), name), []).append(_orch(tree, command, dbs[name]))
    rows = []
    for command in COMMANDS:
        label = " ".join(command)
        anchor, ours = times[(label, "anchor")], times[(label, "this checkout")]
        rows.append({"command": f"orch {label}", "anchor_median_s": round(statistics.median(anchor), 3),
                     "anchor_min_s": round(min(anchor), 3), "median_s": round(statistics.median(ours), 3),
                     "min_s": round(min(ours), 3),
                     "ratio": round(statistics.median(ours) / statistics.median(anchor), 3)})
    print(f"anchor {args.anchor}, {args.runs} runs each, alternating; {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")
    print("| command | anchor median s | anchor fastest s | this checkout median s | fastest s | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| `{r['command']}` | {r['anchor_median_s']} | {r['anchor_min_s']} | {r['median_s']} | {r['min_s']} | "
              f"{r['ratio']} |")
    if args.out:
        args.out.write_text(json.dumps({"anchor": args.anchor, "runs": args.runs, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
