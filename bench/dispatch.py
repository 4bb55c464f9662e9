"""Dispatch overhead and fleet utilisation of the real controller on a simulated fleet, side by side with
Ray Tune running the same fake trials.

Our side: `orchestrator.run.controller.Controller` runs a study (random sampler: its cost does not grow with the
number of trials) against a real results database (a SQLite file, and a private PostgreSQL server), with
bench/fake_fleet.py's launcher behind every machine of a generated fleet (8 GPUs each, whole-machine trials).
Ray Tune's side: a function trainable that sleeps the same durations and reports the same val points, one
trial per CPU slot of a private single-node Ray cluster with as many CPUs as machines, reuse_actors on.

Trial k runs durations[k] (uniform 0.5-2 s, drawn from --seed): both sides get the same work. Measured:
- utilisation: busy machine-seconds / (machines x span), span = first job start to last job end; the
  floor is busy / machines, the best any dispatcher could do (Ray's published figure is this ratio: 10,000
  one-second trials in 715 s against 625 s, 87%). Also the same ratio until the last dispatch, which leaves
  out the unavoidable tail (no work left to give, machines finishing at different times);
- free-to-start: on each machine (Ray: each trial actor), the time from a job's end to the next job's start;
- controller overhead per trial: the controller thread's time not spent waiting for events, and its CPU time.

The shared case (`--systems shared-sqlite,shared-postgres`, bench/shared_fleet.py): `--studies` studies at once on
one simulated fleet, one controller process each, one database; `--trials` in all, split between them. Reported
beside the same measures: double bookings (two jobs on one machine at once) and Jain's fairness index of the studies'
machine-seconds while all had work.

Each configuration runs in its own process (`--one`); the parent prints the table and writes it between
the markers of docs/dispatch.md. Usage:

    .venv/bin/python bench/dispatch.py                                   # 256 machines, 5,000 trials, all systems
    .venv/bin/python bench/dispatch.py --machines 16 --trials 200 --systems orch-sqlite --write-docs ''
    .venv/bin/python bench/dispatch.py --one orch-sqlite --profile /tmp/p.txt --machines 64 --trials 1000
    .venv/bin/python bench/dispatch.py --systems shared-sqlite,shared-postgres --studies 4 --machines 64 --trials 2000 --write-docs ''
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MARKERS = "<!-- dispatch:{tag}:begin -->", "<!-- dispatch:{tag}:end -->"  # a run replaces its tag's block
DEFAULT_SYSTEMS = ("orch-sqlite", "orch-postgres", "ray-tune")
SHARED_SYSTEMS = ("shared-sqlite", "shared-postgres")  # several studies at once (bench/shared_fleet.py)
SYSTEMS = DEFAULT_SYSTEMS + SHARED_SYSTEMS
STUDY = "dispatch"


def durations(trials: int, seed: int, low: float, high: float) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(low, high), 4) for _ in range(trials)]


# ---- measures from (slot, start, end) triples, the same for both sides --------------------------------------
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def measures(jobs: list[tuple[str, float, float]], machines: int) -> dict:
    """jobs: (slot, start, end) in seconds on one clock; end = start + the job's own duration (a dispatcher
    that hears of an exit late, or stalls a job's output, loses that time as idle machine time)."""
    first, last = min(s for _, s, _ in jobs), max(e for _, _, e in jobs)
    span = last - first
    busy = sum(e - s for _, s, e in jobs)
    last_dispatch = max(s for _, s, _ in jobs)
    busy_before = sum(min(e, last_dispatch) - s for _, s, e in jobs if s < last_dispatch)
    gaps = []
    by_slot: dict[str, list[tuple[float, float]]] = {}
    for slot, s, e in jobs:
        by_slot.setdefault(slot, []).append((s, e))
    for runs in by_slot.values():
        runs.sort()
        gaps += [nxt[0] - prev[1] for prev, nxt in zip(runs, runs[1:])]
    fill = sorted(s for _, s, _ in jobs)[min(machines, len(jobs)) - 1] - first
    return {
        "span_s": span, "floor_s": busy / machines, "utilisation": busy / (machines * span),
        "utilisation_to_last_dispatch": busy_before / (machines * (last_dispatch - first)) if last_dispatch > first else None,
        "fill_s": fill, "gaps": len(gaps),
        "gap_p50_ms": 1000 * percentile(gaps, 50), "gap_p99_ms": 1000 * percentile(gaps, 99),
        "gap_max_ms": 1000 * max(gaps) if gaps else float("nan"), "gap_mean_ms": 1000 * statistics.fmean(gaps) if gaps else float("nan"),
    }


def ideal(machines: int, table: list[float]) -> dict:
    """A dispatcher with no overhead: trial k, in order, starts the moment a machine is free (greedy list
    scheduling, what any dispatcher that does not know the durations can do at best). Its utilisation is below
    100% by the tail alone: the last trials end at different times and nothing is left to start."""
    import heapq

    free_at = [(0.0, f"m{i}") for i in range(machines)]
    jobs = []
    for duration in table:
        start, slot = heapq.heappop(free_at)
        jobs.append((slot, start, start + duration))
        heapq.heappush(free_at, (start + duration, slot))
    result = measures(jobs, machines)
    result.update(wall_s=None, overhead_ms_per_trial=None, cpu_ms_per_trial=None, rounds=None, sql_per_trial=None)
    return result


# ---- our controller -------------------------------------------------------------------------------------------
class TimedQueue(queue.Queue):
    """The controller's event queue, counting the time its thread spends blocked waiting for an event."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.waited = 0.0

    def get(self, block: bool = True, timeout: float | None = None):
        if not block:
            return super().get(block, timeout)
        t0 = time.perf_counter()
        try:
            return super().get(block, timeout)
        finally:
            self.waited += time.perf_counter() - t0


def study_yaml(trials: int, sampler: str) -> str:
    import yaml

    return yaml.safe_dump({
        "description": "bench/dispatch.py: fake 0.5-2 s trials on a simulated fleet",
        "trainer": {"command": ["{python}", "-m", "trainer", "--preset", "gpt2"], "log_format": "orch"},
        "parameters": {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True, "flag": "--lr"},
                       "warmup": {"type": "int", "low": 0, "high": 500, "flag": "--warmup"}},
        "objective": {"minimize": "train_time_s", "subject_to": ["val_loss <= 3.28"]},
        "sampler": {"name": sampler, "seed": 0},
        "budget": {"max_trials": trials, "dispatch": "continuous"},
        "resources": {"gpus": 8}, "timeout_s": 60, "retries": 0,
    }, sort_keys=False)


def sim_fleet(machines: int):
    from orchestrator.config.fleet import Fleet, Machine

    # launcher "local" is the name the controller looks up; bench passes the fake under that name
    return Fleet(machines=[Machine(name=f"sim-{i:03d}", host=f"sim-{i:03d}", launcher="local", gpus=8,
                                   workdir="runs") for i in range(machines)], source="<simulated fleet>")


def count_statements() -> list[int]:
    """SQL statements sent by every engine of this process (ours and Optuna's): a figure the machine's load
    does not change."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    counter = [0]

    def _count(*_args) -> None:
        counter[0] += 1

    event.listen(Engine, "before_cursor_execute", _count)
    return counter


def run_orch(db_url: str, args, work: Path) -> dict:
    from db import Database
    from orchestrator.run.controller import Controller
    from orchestrator.study.lifecycle import create_study
    from fake_fleet import FakeFleetLauncher

    os.chdir(work)
    study_file = work / "study.yaml"
    study_file.write_text(study_yaml(args.trials, args.sampler))
    db = Database(db_url)
    create_study(db, STUDY, study_file)
    fake = FakeFleetLauncher(durations(args.trials, args.seed, args.min_s, args.max_s))
    controller = Controller(db, STUDY, sim_fleet(args.machines), launchers={"local": fake})
    controller.events = TimedQueue(controller.events.maxsize)
    statements = count_statements()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    cpu0, t0 = time.thread_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    progress = controller.run()
    if profiler:
        profiler.disable()
    wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    fake.close()
    if profiler:
        import io
        import pstats

        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
        Path(args.profile).write_text(out.getvalue())
    done = [r for r in fake.records.values() if r.delivered is not None and not r.cancelled]
    if progress.done != args.trials or len(done) != args.trials:
        raise SystemExit(f"only {progress.done} of {args.trials} trials completed ({len(done)} jobs ended)")
    result = measures([(r.machine, r.started, r.ended) for r in done], args.machines)
    busy_thread = wall - controller.events.waited
    result.update(wall_s=wall, overhead_ms_per_trial=1000 * busy_thread / args.trials,
                  cpu_ms_per_trial=1000 * cpu / args.trials, rounds=progress.round,
                  sql_per_trial=statements[0] / args.trials)
    db.dispose()
    return result


def start_postgres():
    from tests.conftest import PostgresServer

    server = PostgresServer()
    server.start()
    return server


# ---- Ray Tune -------------------------------------------------------------------------------------------------
def _tune_trainable(config):
    from ray import tune

    start = time.time()
    duration, steps = config["duration"], 400
    for k in range(1, 5):
        time.sleep(max(0.0, start + duration * k / 4 - time.time()))
        metrics = {"step": steps * k // 4, "val_loss": 4.2 - 0.25 * k, "train_time_ms": int(1000 * duration * k / 4)}
        if k == 4:
            metrics.update(t_start=start, pid=os.getpid())
        tune.report(metrics)


def run_ray(args, work: Path) -> dict:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
    import ray
    from ray import tune

    table = durations(args.trials, args.seed, args.min_s, args.max_s)
    ray.init(address="local", num_cpus=args.machines, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(work / "ray"), logging_level="ERROR")
    try:
        tuner = tune.Tuner(
            _tune_trainable,
            param_space={"duration": tune.grid_search(table)},
            tune_config=tune.TuneConfig(max_concurrent_trials=args.machines, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(work / "tune"), name=STUDY, verbose=0),
        )
        t0 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    frames = [(r.metrics, r.config["duration"]) for r in grid if r.metrics and "t_start" in r.metrics]
    if len(frames) != args.trials:
        raise SystemExit(f"Ray Tune completed {len(frames)} of {args.trials} trials")
    result = measures([(str(m["pid"]), m["t_start"], m["t_start"] + d) for m, d in frames], args.machines)
    result.update(wall_s=wall, overhead_ms_per_trial=None, cpu_ms_per_trial=None, rounds=None, sql_per_trial=None)
    return result


# ---- one configuration in this process ------------------------------------------------------------------------
def run_one(args) -> dict:
    if args.one in SHARED_SYSTEMS:
        from shared_fleet import shared_one

        return shared_one(args, args.one)
    with tempfile.TemporaryDirectory(prefix="orch-dispatch-") as tmp:
        work = Path(tmp)
        if args.one == "orch-sqlite":
            return run_orch(f"sqlite:///{work / 'orch.db'}", args, work)
        if args.one == "orch-postgres":
            server = start_postgres()
            try:
                return run_orch(server.create_database(), args, work)
            finally:
                server.stop()
        if args.one == "ray-tune":
            return run_ray(args, work)
    raise SystemExit(f"unknown system {args.one!r} (fix: one of {', '.join(SYSTEMS)})")


# ---- parent: every system, the table, the doc -----------------------------------------------------------------
def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    best = next((r["utilisation"] for r in rows if r["system"] == "ideal"), None)
    head = ("| system | machines | trials | wall s | span s | floor s | utilisation | of ideal | until last dispatch | fill s "
            "| free-to-start p50 ms | p99 ms | max ms | controller ms/trial | controller CPU ms/trial | SQL statements/trial |")
    out = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        out.append(f"| {r['system']} | {r['machines']} | {r['trials']} | {fmt(r['wall_s'], '.1f')} | "
                   f"{fmt(r['span_s'], '.2f')} | {fmt(r['floor_s'], '.2f')} | {fmt(100 * r['utilisation'], '.1f')}% | "
                   f"{fmt(best and 100 * r['utilisation'] / best, '.1f')}% | "
                   f"{fmt(r['utilisation_to_last_dispatch'] and 100 * r['utilisation_to_last_dispatch'], '.1f')}% | "
                   f"{fmt(r['fill_s'], '.2f')} | {fmt(r['gap_p50_ms'], '.1f')} | {fmt(r['gap_p99_ms'], '.1f')} | "
                   f"{fmt(r['gap_max_ms'], '.1f')} | {fmt(r['overhead_ms_per_trial'], '.2f')} | "
                   f"{fmt(r['cpu_ms_per_trial'], '.2f')} | {fmt(r['sql_per_trial'], '.1f')} |")
    return "\n".join(out)


def shared_table(rows: list[dict]) -> str:
    best = next((r["utilisation"] for r in rows if r["system"] == "ideal"), None)
    head = ("| system | machines | trials | studies | wall s | span s | utilisation | of ideal | free-to-start p50 ms "
            "| p99 ms | max ms | double bookings | Jain (fair window s) | controller CPU ms/trial | SQL statements/trial |")
    out = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        jain = "-" if r.get("jain") is None else f"{r['jain']:.4f} ({r['fair_window_s']:.0f})"
        out.append(f"| {r['system']} | {r['machines']} | {r['trials']} | {r.get('studies', '-')} | "
                   f"{fmt(r['wall_s'], '.1f')} | {fmt(r['span_s'], '.2f')} | {fmt(100 * r['utilisation'], '.1f')}% | "
                   f"{fmt(best and 100 * r['utilisation'] / best, '.1f')}% | {fmt(r['gap_p50_ms'], '.1f')} | "
                   f"{fmt(r['gap_p99_ms'], '.1f')} | {fmt(r['gap_max_ms'], '.1f')} | {r.get('double_bookings', '-')} | "
                   f"{jain} | {fmt(r['cpu_ms_per_trial'], '.2f')} | {fmt(r['sql_per_trial'], '.1f')} |")
    return "\n".join(out)


def machine_line() -> str:
    load = os.getloadavg()
    return (f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"load average before the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=256)
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--sampler", default="random", help="the study's sampler (random: cost flat in trials)")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    parser.add_argument("--ray-machines", type=int, default=None,
                        help="Ray Tune's concurrency (default --machines; one worker process each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-s", type=float, default=0.5)
    parser.add_argument("--max-s", type=float, default=2.0)
    parser.add_argument("--write-docs", default=str(ROOT / "docs" / "dispatch.md"), help="'' to skip")
    parser.add_argument("--tag", default="full", help="which results block of the doc this run replaces")
    parser.add_argument("--json", default="", help="also write the results as JSON here")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    parser.add_argument("--profile", default="", help="with --one orch-*: write a cProfile of the controller here; "
                        "with --one shared-*: of each study's controller, to FILE.<study index>")
    parser.add_argument("--studies", type=int, default=4, help="shared-*: studies at once, --trials split between them")
    parser.add_argument("--shared-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--db-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shared_child is not None:
        from shared_fleet import run_child

        run_child(args)
        return
    if args.one:
        result = run_one(args)
        Path(args.result).write_text(json.dumps(result)) if args.result else print(json.dumps(result, indent=1))
        return

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"--systems: unknown {unknown[0]!r} (fix: use {', '.join(SYSTEMS)})")
    shared = [s for s in systems if s in SHARED_SYSTEMS]
    if shared and len(shared) != len(systems):
        raise SystemExit(f"--systems: {', '.join(shared)} cannot be mixed with one-study systems in one run (fix: run "
                         "them separately, each with its own --tag)")
    machine = machine_line()
    started = datetime.now(timezone.utc)
    if shared:
        from shared_fleet import ideal_shared

        rows = [{"system": "ideal", "machines": args.machines, "trials": args.trials, "studies": args.studies,
                 **ideal_shared(args)}]
    else:
        rows = [{"system": "ideal", "machines": args.machines, "trials": args.trials,
                 **ideal(args.machines, durations(args.trials, args.seed, args.min_s, args.max_s))}]
    for system in systems:
        machines = args.ray_machines or args.machines if system == "ray-tune" else args.machines
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            argv = [sys.executable, __file__, "--one", system, "--result", out.name, "--machines", str(machines),
                    "--trials", str(args.trials), "--sampler", args.sampler, "--seed", str(args.seed),
                    "--min-s", str(args.min_s), "--max-s", str(args.max_s), "--studies", str(args.studies)] + (
                        ["--profile", args.profile] if args.profile and system in SHARED_SYSTEMS else [])
            print(f"running {system}: {machines} machines, {args.trials} trials ...", flush=True)
            proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                raise SystemExit(f"{system} failed (exit {proc.returncode})")
            rows.append({"system": system, "machines": machines, "trials": args.trials, **json.loads(Path(out.name).read_text())})
    text = shared_table(rows) if shared else table(rows)
    after = os.getloadavg()
    machine += f", after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}"
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.write_docs:
        begin, end = (m.format(tag=args.tag) for m in MARKERS)
        command = "python bench/dispatch.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        block = (f"{begin}\nCommand: `{command.strip()}`  \nMachine: {machine}  \nDate: {started:%Y-%m-%d %H:%M} UTC; "
                 f"sampler {args.sampler}, trial durations uniform {args.min_s:g}-{args.max_s:g} s (seed {args.seed}"
                 + (f"; {args.studies} studies of equal priority, seeds {args.seed}..{args.seed + args.studies - 1}"
                    if shared else "") + "); "
                 "PostgreSQL: a private server as tests/conftest.py starts it (fsync=off)\n\n"
                 f"{text}\n{end}")
        path = Path(args.write_docs)
        doc = path.read_text() if path.exists() else "# Dispatch benchmark\n"
        if begin in doc and end in doc:
            doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end):]
        else:
            doc += "\n" + block + "\n"
        path.write_text(doc)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
