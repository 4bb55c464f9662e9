"""The shared case of bench/dispatch.py: several studies at once on one simulated fleet, one controller process each
(as separate `orch study run` processes would be), one results database (a SQLite file or a private PostgreSQL),
every controller with its own bench/fake_fleet.py launcher over the same machine names. The fleet-level scheduler
(orchestrator/claims) is all that keeps them apart.

The parent creates the studies, starts one child per study, releases them together (a file barrier), then reads every
child's job records (machine, start, end on the system-wide monotonic clock) and measures, over all studies:
- utilisation against the ideal dispatcher (the same durations, handed out round-robin between the studies with no
  overhead on the same machines), free-to-start per machine (across studies: a machine freed by one study and taken by
  another counts), as bench/dispatch.py does for one study;
- double bookings: two jobs on one machine at once (must be 0);
- fairness: Jain's index of the studies' machine-seconds while all of them had work (first start to the first study's
  last dispatch), between studies of equal priority (all of them here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GO = "go"


def _name(i: int) -> str:
    return f"shared{i}"


def _durations(args, i: int) -> list[float]:
    from dispatch import durations

    return durations(args.trials // args.studies, args.seed + i, args.min_s, args.max_s)


def ideal_shared(args) -> dict:
    """The zero-overhead dispatcher on the studies' durations, interleaved round-robin (what a fair dispatcher
    would hand out), on all machines."""
    from dispatch import ideal

    tables = [_durations(args, i) for i in range(args.studies)]
    order = [tables[i][k] for k in range(max(map(len, tables))) for i in range(args.studies) if k < len(tables[i])]
    return ideal(args.machines, order)


def run_shared(args, db_url: str, work: Path) -> dict:
    """Parent: studies, children, barrier, records, measures."""
    from db import Database
    from dispatch import STUDY, count_statements, measures, study_yaml  # noqa: F401
    from orchestrator.study.lifecycle import create_study

    from orchestrator.claims.policy import jain

    db = Database(db_url)
    per_study = args.trials // args.studies
    for i in range(args.studies):
        path = work / f"{_name(i)}.yaml"
        path.write_text(study_yaml(per_study, args.sampler))
        create_study(db, _name(i), path)
    db.dispose()
    children = []
    for i in range(args.studies):
        out = work / f"child{i}.json"
        argv = [sys.executable, str(ROOT / "bench" / "dispatch.py"), "--shared-child", str(i), "--db-url", db_url,
                "--work", str(work), "--result", str(out), "--machines", str(args.machines), "--trials",
                str(args.trials), "--studies", str(args.studies), "--seed", str(args.seed), "--min-s", str(args.min_s),
                "--max-s", str(args.max_s), "--sampler", args.sampler] + (
                    ["--profile", f"{args.profile}.{i}"] if args.profile else [])
        log = open(work / f"child{i}.log", "w")
        children.append((subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), out, log))
    deadline = time.monotonic() + 300
    while not all((work / f"ready{i}").exists() for i in range(args.studies)):
        if any(p.poll() is not None for p, _, _ in children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (work / GO).touch()
    t0 = time.perf_counter()
    failed = []
    for i, (proc, out, log) in enumerate(children):
        proc.wait()
        log.close()
        if proc.returncode != 0:
            failed.append(f"child {i} exit {proc.returncode}: {(work / f'child{i}.log').read_text()[-3000:]}")
    wall = time.perf_counter() - t0
    if failed:
        raise SystemExit("\n".join(failed))
    results = [json.loads(out.read_text()) for _, out, _ in children]
    jobs = [(j["machine"], j["start"], j["end"], r["study"]) for r in results for j in r["jobs"]]
    if len(jobs) != per_study * args.studies:
        raise SystemExit(f"only {len(jobs)} of {per_study * args.studies} trials completed")
    result = measures([(m, s, e) for m, s, e, _ in jobs], args.machines)
    by_machine: dict[str, list] = {}
    for m, s, e, _ in jobs:
        by_machine.setdefault(m, []).append((s, e))
    double = sum(1 for runs in by_machine.values() for a, b in zip(sorted(runs), sorted(runs)[1:]) if b[0] < a[1] - 1e-6)
    first = min(s for _, s, _, _ in jobs)
    until = min(max(s for _, s, _, st in jobs if st == r["study"]) for r in results)  # first study's last dispatch
    used = [sum(max(0.0, min(e, until) - max(s, first)) for _, s, e, st in jobs if st == r["study"]) for r in results]
    result.update(wall_s=wall, overhead_ms_per_trial=sum(r["busy_s"] for r in results) * 1000 / len(jobs),
                  cpu_ms_per_trial=sum(r["cpu_s"] for r in results) * 1000 / len(jobs), rounds=None,
                  sql_per_trial=sum(r["statements"] for r in results) / len(jobs), double_bookings=double,
                  jain=jain(used), fair_window_s=until - first, studies=args.studies)
    return result


def run_child(args) -> None:
    """One study's controller against the shared database, after the barrier; its jobs go to `--result`."""
    from db import Database
    from dispatch import TimedQueue, count_statements, sim_fleet
    from fake_fleet import FakeFleetLauncher
    from orchestrator.run.controller import Controller

    i, work = args.shared_child, Path(args.work)
    os.chdir(work)
    db = Database(args.db_url)
    fake = FakeFleetLauncher(_durations(args, i))
    controller = Controller(db, _name(i), sim_fleet(args.machines), launchers={"local": fake})
    controller.events = TimedQueue(controller.events.maxsize)
    statements = count_statements()
    (work / f"ready{i}").touch()
    while not (work / GO).exists():
        time.sleep(0.01)  # the barrier: every controller starts at the same moment
    profiler = None
    if args.profile:  # `--profile FILE`: each child writes FILE.<its index>
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu0, t0 = time.thread_time(), time.perf_counter()
    progress = controller.run()
    wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    if profiler:
        import io
        import pstats

        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
        Path(args.profile).write_text(out.getvalue())
    fake.close()
    done = [r for r in fake.records.values() if r.delivered is not None and not r.cancelled]
    if progress.done != len(done) or len(done) != args.trials // args.studies:
        raise SystemExit(f"{_name(i)}: {progress.done} of {args.trials // args.studies} trials completed")
    Path(args.result).write_text(json.dumps({
        "study": _name(i), "busy_s": wall - controller.events.waited, "cpu_s": cpu, "statements": statements[0],
        "jobs": [{"machine": r.machine, "start": r.started, "end": r.ended} for r in done]}))
    db.dispose()


def shared_one(args, system: str) -> dict:
    """`--one shared-sqlite|shared-postgres`: a fresh database, then `run_shared`."""
    from dispatch import start_postgres

    with tempfile.TemporaryDirectory(prefix="orch-shared-") as tmp:
        work = Path(tmp)
        if system == "shared-sqlite":
            return run_shared(args, f"sqlite:///{work / 'orch.db'}", work)
        server = start_postgres()
        try:
            return run_shared(args, server.create_database(), work)
        finally:
            server.stop()


__all__ = ["ideal_shared", "run_shared", "run_child", "shared_one"]
