"""The reliability figures (docs/reliability.md): run the fault-injection suite, collect what each test measured,
print the table and write it into the page.

    .venv/bin/python bench/reliability.py                      # runs the fault tests (about 9 minutes on 2 cores)
    .venv/bin/python bench/reliability.py --figures FILE.jsonl # render figures recorded earlier
    .venv/bin/python bench/reliability.py -- -k "not postgres" # extra pytest arguments after --

Each fault test (tests/fault, and the link cut of tests/fleet/test_netns.py) records one JSON object a line
(tests/conftest.py: `figures.record`): fault, database, injected, behaviour, recover_s, recover_what, lost,
duplicates. A fault that no test recorded in this run (e.g. skipped: no network namespaces, no Ray) keeps a row
saying so, so the table always has one row per fault.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "reliability.md"
START, END = "<!-- figures:start (bench/reliability.py writes this part) -->", "<!-- figures:end -->"
#: rows kept when no test of this run measured them
PLACEHOLDERS = {
    "2b": ("a machine's network-namespace link cut mid-trial", "not measured in this run (tests/fleet/test_netns.py skipped?)"),
    "3": ("a Ray node killed mid-trial (tests/fault/test_ray_node_kill.py)", "not measured in this run (skipped?)"),
}
FAULT_TESTS = ["tests/fault", "tests/fleet/test_netns.py::test_cutting_a_link_mid_trial_fails_it_by_machine_and_the_machine_comes_back"]
FAULT_NAMES = {"1": "controller SIGKILL", "2a": "sshd killed", "2b": "link cut", "3": "Ray node killed",
               "4a": "trainer diverges", "4b": "trainer crashes", "5": "PostgreSQL down 10 s", "6": "two controllers",
               "7a": "disk full", "7b": "a log of several GB"}


def run_suite(out: Path, extra: list[str]) -> int:
    env = {**os.environ, "ORCH_RELIABILITY_OUT": str(out)}
    command = [sys.executable, "-m", "pytest", "-q", *FAULT_TESTS, *extra]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, cwd=REPO, env=env).returncode


def _sort_key(row: dict) -> tuple:
    fault = str(row["fault"])
    return (int("".join(c for c in fault if c.isdigit()) or 0), fault, row.get("database", ""))


def render(rows: list[dict]) -> str:
    seen = {str(r["fault"]) for r in rows}
    for fault, (injected, behaviour) in PLACEHOLDERS.items():
        if fault not in seen:
            rows = rows + [{"fault": fault, "database": "—", "injected": injected, "behaviour": behaviour,
                            "recover_s": None, "recover_what": "", "lost": "—", "duplicates": "—", "placeholder": True}]
    lines = ["| fault | injected | what the system did | time to recover | trials lost | duplicates | database |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(rows, key=_sort_key):
        fault = str(row["fault"])
        name = FAULT_NAMES.get(fault, "")
        if row.get("recover_s") is None:
            recover = "—" if row.get("placeholder") else "n/a (" + (row.get("recover_what") or "none needed") + ")"
        else:
            recover = f"{row['recover_s']:.2f} s ({row.get('recover_what', '')})"
        lines.append(f"| {fault}{' ' + name if name else ''} | {row['injected']} | {row['behaviour']} | {recover} | "
                     f"{row['lost']} | {row['duplicates']} | {row['database']} |")
    return "\n".join(lines)


def write_page(table: str, how: str) -> None:
    text = PAGE.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{PAGE}: the markers {START!r} ... {END!r} are missing (fix: restore them)")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    PAGE.write_text(f"{head}{START}\n{how}\n\n{table}\n{END}{tail}", encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figures", type=Path, help="render this JSONL file instead of running the suite")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args()
    status = 0
    if args.figures is None:
        out = Path(tempfile.mkdtemp(prefix="orch-reliability-")) / "figures.jsonl"
        status = run_suite(out, args.pytest_args)
        figures = out
    else:
        figures = args.figures
    rows = [json.loads(line) for line in figures.read_text().splitlines() if line.strip()] if figures.exists() else []
    table = render(rows)
    print(table)
    if not args.no_write:
        cpus = os.cpu_count()
        how = (f"Measured {dt.date.today().isoformat()} on {platform.node() or 'this machine'} ({cpus} cores, "
               f"{platform.system()} {platform.release()}, Python {platform.python_version()}) by "
               f"`.venv/bin/python bench/reliability.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`"
               f"{'' if status == 0 else f' (pytest exit status {status}: see its output)'}.")
        write_page(table, how)
        print(f"wrote {PAGE}")
    return status


if __name__ == "__main__":
    sys.exit(main())
