"""Search efficiency over a family of simulated stage-schedule worlds (bench/worlds.py).

Per world, method and seed: a fleet of 4 machines runs rounds of 4 trials (4 asks, then 4 tells) up to
``--budget``, every method an Optuna sampler driven the same way (``suggest_float(name, low, high,
step=0.01)``; ``val_loss`` user attr, ``orch:machine`` system attr, ``set_constraint("val_loss", v - 3.28)``;
a crashed run is told as FAIL with ``orch:exit_reason = crashed`` and counts against the budget).  Every
method's first run is the baseline (equal thirds), as a team starts; the frontier sampler is also told
the baseline (``start``), which a user knows.

After every round ONE pick rule, the same for all methods and blind to the truth, reads the study's
finished runs: ``orchestrator.samplers.frontier.recommend(observations, space, target=3.28,
level=LEVEL, noise_hint=HINT)`` with LEVEL = 0.9, the level a study gets by default.  The pick is judged
against the world's truth:

* feasible / wrong / none: the pick's true mean val_loss <= target / > target / no pick; "(x% fb)": the seeds
  with no pick whose baseline, which the team then keeps, misses the target in truth (a failing baseline);
* regret: true expected time of the pick minus the best feasible variant's (s); a None pick (the team keeps
  the baseline, equal thirds) scores the baseline's time minus the best's, 0 where no feasible variant is faster
  than the baseline (``WorldDraw.regret``: a no-pick once scored negative there, flattering methods that
  seldom pick);
* right: a pick, feasible and within 0.15 s of the best; trials until right: the first checkpoint after which
  every pick up to the budget is right (``>B`` when never);
* where the floor allows: the seeds on which the known-shape floor (below) is right within 12 trials, and the
  method's median trials until right over them (the issue's goal: <= 12 there);
* ours: trials at ``FrontierSampler.settled()`` and the pick there;
* noise floor (uses the truth; a reference): runs at the best variant for P(mean <= target) >= LEVEL and at
  its faster neighbour to call it infeasible (one-sided normal, the world's noise there);
* known-shape floor (uses the truth; a reference): the pick, under the same level, of a method that knows the
  world's whole shape and lacks only its offset (``WorldDraw.shape_floor``): the median regret no calibrated
  method beats at that many runs, and the runs after which its median pick is right.

Usage::

    .venv/bin/python bench/search_efficiency.py                      # 200 seeds (gp 50), 2 workers
    .venv/bin/python bench/search_efficiency.py --seeds 4 --seeds-gp 2 --write-docs ''   # quick look
    # worlds run apart (a slow one, or on another machine), each saved, then written up as one table:
    .venv/bin/python bench/search_efficiency.py --worlds with-lr --write-docs '' --save runs/bench/with-lr.json
    .venv/bin/python bench/search_efficiency.py --load runs/bench/rest.json,runs/bench/with-lr.json
    # one method run again after a change: a later file's results replace an earlier one's (world, method, seed)
    .venv/bin/python bench/search_efficiency.py --methods ours --write-docs '' --save runs/bench/ours.json
    .venv/bin/python bench/search_efficiency.py --load runs/bench/all.json,runs/bench/ours.json

Writes the tables and the exact command into docs/search.md (between markers) and one line per world
into docs/benchmarks.md unless ``--write-docs ''``.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
import dataclasses
from dataclasses import dataclass, field
import json
import math
import os
import shlex
from pathlib import Path
import sys
import time
from typing import Any

# one BLAS/OpenMP thread per worker process (set before numpy loads): the pool is the parallelism, and a
# multi-threaded Cholesky on a shared 2-core machine is slower than a single-threaded one
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import worlds as W  # noqa: E402
from orchestrator.samplers import _tpe  # noqa: E402
from orchestrator.samplers import frontier as fr  # noqa: E402


BEGIN = "<!-- search-efficiency:begin -->"
END = "<!-- search-efficiency:end -->"
BENCH_ROW = "| Search efficiency"
CHECKPOINTS = (12, 24, 40)
TOLERANCE = W.RIGHT_TOLERANCE  # s: "right" = feasible and within this of the best feasible variant's true time
FLOOR_ALLOWS = 12  # the goal: a right pick within this many trials on the seeds whose noise allows it
METHODS = ("ours", "tpe", "gp", "random", "oracle")


# ----------------------------------------------------------------------------- the one pick rule
def pick(obs: list[dict[str, Any]], world: W.WorldDraw) -> int | None:
    """The variant index the rule picks from finished runs (never reads the truth)."""
    spec = world.spec
    space = fr.SearchSpace([fr.Param(a.name, a.low, a.high, a.step) for a in spec.axes])
    observations = [fr.Observation(params=o["params"], objective=o["time"], metric=o["loss"],
                                   machine=o["machine"], status=o["status"]) for o in obs]
    rec = fr.recommend(observations, space, target=W.TARGET, level=W.LEVEL, noise_hint=spec.hint,
                       baseline=spec.baseline)
    return None if rec.params is None else world.key(rec.params)


# ----------------------------------------------------------------------------- methods
def make_sampler(method: str, seed: int, spec: W.WorldSpec) -> Any:
    import optuna

    if method == "ours":
        return fr.FrontierSampler(constraint_key="val_loss", threshold=W.TARGET, noise_std=spec.hint,
                                  level=W.LEVEL, seed=seed, start=spec.baseline)
    if method == "tpe":
        return _tpe(None, {}, seed)  # exactly as orch builds it
    if method == "gp":
        return optuna.samplers.GPSampler(seed=seed)  # constraints: trial.set_constraint (Optuna 5)
    if method in ("random", "oracle"):
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown method {method!r}")


@dataclass
class SeedResult:
    world: str
    method: str
    seed: int
    picks: dict[int, int | None] = field(default_factory=dict)  # trials -> pick (only where needed)
    until_right: float = math.inf  # trials until the pick is right and stays right through the budget
    settled_at: int | None = None
    crashed: int = 0
    seconds: float = 0.0  # the whole seed: sampler, study and pick rule
    pick_seconds: float = 0.0  # of which the pick rule
    runs: list[tuple[int, int, str, float | None]] = field(default_factory=list)  # variant, repeat, machine, loss

    @property
    def pick_at_stop(self) -> int | None:
        return None if self.settled_at is None else self.picks[self.settled_at]


def simulate(world_name: str, method: str, seed: int, budget: int = 40,
             checkpoints: tuple[int, ...] = CHECKPOINTS) -> SeedResult:
    """One seed of one method in one world.  The study runs to the budget first; the pick rule then reads
    the runs as they stood after each round it is needed for (checkpoints, the sampler's stop, and the
    rounds back from the budget while the pick stays right), which is what it would have said then."""
    import optuna
    from optuna.trial import TrialState

    world = W.draw(world_name, seed)
    spec = world.spec
    t0 = time.perf_counter()
    sampler = make_sampler(method, seed, spec)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    storage = study._storage
    res = SeedResult(world_name, method, seed)
    obs: list[dict[str, Any]] = []
    rounds: list[int] = []
    repeats: dict[int, int] = {}
    oracle = [world.best] + ([world.neighbour] if world.neighbour is not None else [])
    n = 0
    while n < budget:
        k = min(W.MACHINES, budget - n)
        trials = []
        for j in range(k):
            if method == "oracle":  # the ideal data: best feasible and its faster neighbour, alternately
                v = world.variants[oracle[(n + j) % len(oracle)]]
                study.enqueue_trial(dict(zip(spec.names, v)))
            elif n + j == 0:  # every method's first run is the baseline, as a team starts
                study.enqueue_trial(spec.baseline)
            tr = study.ask()
            params = {a.name: tr.suggest_float(a.name, a.low, a.high, step=a.step) for a in spec.axes}
            trials.append((tr, params))
        for j, (tr, params) in enumerate(trials):
            i = world.key(params)
            assert i is not None, params
            r = repeats.get(i, 0)
            repeats[i] = r + 1
            machine = f"m{j % W.MACHINES}"
            t, loss, crashed = world.run(i, r, j)
            res.runs.append((i, r, machine, loss))
            storage.set_trial_system_attr(tr._trial_id, "orch:machine", machine)
            if crashed:
                storage.set_trial_system_attr(tr._trial_id, "orch:exit_reason", "crashed")
                study.tell(tr, state=TrialState.FAIL)
                res.crashed += 1
                obs.append({"params": params, "time": None, "loss": None, "machine": machine, "status": "crashed"})
            else:
                tr.set_user_attr("val_loss", loss)
                tr.set_constraint("val_loss", loss - W.TARGET)
                study.tell(tr, t)
                obs.append({"params": params, "time": t, "loss": loss, "machine": machine, "status": "ok"})
        n += k
        rounds.append(n)
        if method == "ours" and res.settled_at is None and sampler.settled(study):
            res.settled_at = n
    t1 = time.perf_counter()

    def at(c: int) -> int | None:
        if c not in res.picks:
            res.picks[c] = pick(obs[:c], world)
        return res.picks[c]

    for c in [*checkpoints, n, *([res.settled_at] if res.settled_at else [])]:
        if c in rounds:
            at(c)
    for c in reversed(rounds):  # trials until right: back from the budget while the pick stays right
        if not _right(world, at(c)):
            break
        res.until_right = c
    res.pick_seconds = time.perf_counter() - t1
    res.seconds = time.perf_counter() - t0
    return res


def _run(task: tuple[str, str, int, int]) -> SeedResult:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    _one_thread()
    return simulate(*task)


def _one_thread() -> None:
    """One thread per worker: GPSampler's torch otherwise spreads over every core (60 s a seed, not 3)."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


# ----------------------------------------------------------------------------- figures
def _right(world: W.WorldDraw, i: int | None) -> bool:
    return i is not None and bool(world.feasible[i]) and world.regret(i) <= TOLERANCE + 1e-9


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _q(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, float), q, method="higher"))


def _trials(x: float, budget: int) -> str:
    return f">{budget}" if math.isinf(x) else f"{x:.0f}"


def summarise(results: list[SeedResult], budget: int) -> list[dict[str, str]]:
    rows = []
    checkpoints = sorted({c for c in CHECKPOINTS if c < budget} | {budget})
    for wname in dict.fromkeys(r.world for r in results):
        # each seed's world and its known-shape floor once, for every method that ran it
        draws = {s: W.draw(wname, s) for s in dict.fromkeys(r.seed for r in results if r.world == wname)}
        floor_allows = {s: d.best is not None and d.shape_floor_runs(TOLERANCE) <= FLOOR_ALLOWS
                        for s, d in draws.items()}
        for m in [m for m in METHODS if any(r.world == wname and r.method == m for r in results)]:
            rs = [r for r in results if r.world == wname and r.method == m]
            ds = [draws[r.seed] for r in rs]
            row = {"world": wname, "method": m, "seeds": str(len(rs))}
            for c in checkpoints:
                picks = [r.picks[c] for r in rs]
                feas = np.mean([p is not None and bool(d.feasible[p]) for d, p in zip(ds, picks)])
                none = np.mean([p is None for p in picks])
                reg = [d.regret(p) for d, p in zip(ds, picks)]
                right = np.mean([_right(d, p) for d, p in zip(ds, picks)])
                wrong = np.mean([p is not None and not d.feasible[p] for d, p in zip(ds, picks)])
                kept_failing = np.mean([p is None and not d.feasible[d.base] for d, p in zip(ds, picks)])
                row[f"@{c}: feasible / wrong / none"] = (f"{_pct(feas)} / {_pct(wrong)} / {_pct(none)}"
                                                         + (f" ({_pct(kept_failing)} fb)" if kept_failing else ""))
                row[f"@{c}: regret s, median (p90)"] = f"{_q(reg, 50):+.2f} ({_q(reg, 90):+.2f})"
                row[f"@{c}: within {TOLERANCE} s"] = _pct(right)
            tt = [r.until_right for r in rs]
            row["trials until right, median / p90"] = f"{_trials(_q(tt, 50), budget)} / {_trials(_q(tt, 90), budget)}"
            allows = [t for r, t in zip(rs, tt) if floor_allows[r.seed]]
            row[f"where the known-shape floor is right by {FLOOR_ALLOWS}: seeds; trials until right, median"] = (
                f"{_pct(len(allows) / len(rs))}; {_trials(_q(allows, 50), budget)}" if allows else "0%; -")
            if m == "ours":
                st = [(d, r) for d, r in zip(ds, rs) if r.settled_at is not None]
                if st:
                    wrong = np.mean([r.pick_at_stop is not None and not d.feasible[r.pick_at_stop] for d, r in st])
                    reg = [d.regret(r.pick_at_stop) for d, r in st]
                    row["ours: settled at (share); at stop wrong, regret"] = (
                        f"{_q([r.settled_at for _, r in st], 50):.0f} ({_pct(len(st) / len(rs))}); "
                        f"{_pct(wrong)}, {_q(reg, 50):+.2f}")
                else:
                    row["ours: settled at (share); at stop wrong, regret"] = "never (0%)"
            else:
                row["ours: settled at (share); at stop wrong, regret"] = "-"
            rows.append(row)
    return rows


def world_rows(names: list[str], seeds: int) -> list[dict[str, str]]:
    rows = []
    for n in names:
        d = W.describe(n, range(seeds))
        lo, hi = d["noise_range"]
        rows.append({
            "world": n,
            "what": W.WORLDS[n].summary,
            "baseline s / hit rate": f"{d['baseline_time']:.2f} / {d['baseline_hit']:.2f}",
            "noise (hint)": (f"{lo:.4f}" if abs(hi - lo) < 1e-12 else f"{lo:.4f}-{hi:.4f}") + f" ({d['hint']:.4f})",
            "best saves s, median": f"{d['best_saves_median']:+.2f}",
            "noise floor: runs at best / at faster neighbour (median)": (
                f"{d['floor_best_median']:.0f} / {d['floor_neighbour_median']:.0f}"),
            "known-shape floor: median regret s @12 / @24 / @40 (wrong @24)": (
                " / ".join(f"{d[f'shape_floor_regret_{n}']:+.2f}" for n in W.FLOOR_CHECKPOINTS)
                + f" ({_pct(d['shape_floor_wrong_24'])})"),
            "known-shape floor: trials until right (median)": _trials(d["shape_floor_runs_median"], 400),
        })
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "|".join(" --- " for _ in keys) + "|"]
    out += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(out)


def cost_line(results: list[SeedResult]) -> str:
    parts = []
    for m in METHODS:
        s = [r.seconds for r in results if r.method == m]
        if s:
            p = [r.pick_seconds for r in results if r.method == m]
            parts.append(f"{m} {np.mean(s):.2f} s ({np.mean(p):.2f} s of it the pick rule)")
    return "Mean seconds per seed and world (one worker): " + ", ".join(parts) + "."


def benchmark_rows(rows: list[dict[str, str]], parts: list[dict[str, Any]]) -> list[str]:
    out = []
    for wname in dict.fromkeys(r["world"] for r in rows):
        used = [p for p in parts if any(r.world == wname for r in p["results"])]
        part = used[0]
        cells, at = [], ""
        for r in (r for r in rows if r["world"] == wname):
            right = [k for k in r if k.endswith(f"within {TOLERANCE} s")][-1]
            fw = [k for k in r if k.endswith("feasible / wrong / none")][-1]
            at = right.split(":")[0].lstrip("@")
            until = r["trials until right, median / p90"].split(" / ")[0]
            cells.append(f"{r['method']} {r[right]} / {r[fw].split(' / ')[1]} ({until})")
        out.append(f"{BENCH_ROW}, world `{wname}` (bench/worlds.py; {W.WORLDS[wname].summary}) | "
                   f"`bench/search_efficiency.py` | [search.md](search.md) | "
                   + " + ".join(f"`{p['command']}`" for p in used) + f"; {part['seeds']} "
                   f"seeds (gp {part['seeds_gp']}), rounds of 4, one pick rule for all. At {at} trials, pick "
                   f"within {TOLERANCE} s of the best / wrong (median trials until right): " + ", ".join(cells) + " |")
    return out


def write_docs(search_md: Path, block: str, bench_md: Path | None, bench_lines: list[str]) -> None:
    text = search_md.read_text() if search_md.exists() else ""
    block = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    search_md.write_text(text)
    if bench_md is None or not bench_md.exists():
        return
    lines = bench_md.read_text().splitlines()
    at = next((i for i, l in enumerate(lines) if l.startswith(BENCH_ROW)), None)
    kept = [l for l in lines if not l.startswith(BENCH_ROW)]
    if at is None:  # after the table header
        at = next((i + 1 for i, l in enumerate(kept) if l.startswith("| ---")), len(kept))
    kept[at:at] = bench_lines
    bench_md.write_text("\n".join(kept) + "\n")


def save(path: Path, part: dict[str, Any]) -> None:
    """One run (its command, seeds, budget, workers, wall time and raw results), so that runs of several worlds
    (or machines) can be written up as one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**part, "results": [dataclasses.asdict(r) for r in part["results"]]}))


def load(path: Path) -> dict[str, Any]:
    part = json.loads(path.read_text())
    results = []
    for r in part["results"]:
        r["picks"] = {int(c): p for c, p in r["picks"].items()}  # JSON keys are strings
        r["until_right"] = float(r["until_right"])
        r["runs"] = [tuple(x) for x in r["runs"]]
        results.append(SeedResult(**r))
    part["results"] = results
    return part


def supersede(parts: list[dict[str, Any]]) -> None:
    """A later run's results replace an earlier one's for the same world, method and seed (one method run again
    after a change, written up with the others' earlier runs); each part records how many it lost."""
    for i, part in enumerate(parts):
        later = {(r.world, r.method, r.seed) for q in parts[i + 1:] for r in q["results"]}
        kept = [r for r in part["results"] if (r.world, r.method, r.seed) not in later]
        part["replaced"] = len(part["results"]) - len(kept)
        part["results"] = kept


def header(parts: list[dict[str, Any]], methods: list[str], written_up_by: str | None = None) -> str:
    """The tables' header: each run's command, seeds, worlds and wall time (and the ``--load`` command that
    wrote several up as one), the pick rule and the costs."""
    runs = []
    for p in parts:
        worlds = list(dict.fromkeys(r.world for r in p["results"]))
        ran = list(dict.fromkeys(r.method for r in p["results"]))
        runs.append(f"`{p['command']}`: {p['seeds']} seeds ({p['seeds_gp']} for gp) x {len(worlds)} world(s) "
                    f"x {', '.join(ran)}, {p['workers']} worker(s), {p['elapsed']:.0f} s"
                    + (f" ({p['replaced']} seed results replaced by a later run's)" if p.get("replaced") else ""))
    results = [r for p in parts for r in p["results"]]
    rule = f"`orchestrator.samplers.frontier.recommend` (level {W.LEVEL:g}, noise hint of the world)"
    return (
        ("Command: " if len(runs) == 1 else "Commands: ") + "; ".join(runs) + ".  \n"
        + (f"Written up as one by `{written_up_by}`.  \n" if written_up_by else "") +
        f"Methods: {', '.join(methods)}; budget {parts[0]['budget']} trials in rounds of {W.MACHINES}. Pick rule "
        f"for every method: {rule}. Regret: true time of the pick minus the best feasible variant's (a None pick "
        f"scores the baseline's time minus the best's, at least 0); right = a feasible pick within {TOLERANCE} s. "
        f"Machines: time x N(1, {W.MACHINE_SD}) per machine per seed.  \n"
        f"{cost_line(results)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--seeds-gp", type=int, default=50, help="seeds for gp (slow), at most --seeds")
    ap.add_argument("--budget", type=int, default=40, help="trials per seed (multiple of 4)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--worlds", default=",".join(W.WORLDS))
    ap.add_argument("--write-docs", default="docs/search.md",
                    help="markdown file (relative to the repository) whose marked section gets the tables "
                         "('' to skip); docs/benchmarks.md gets one line per world")
    ap.add_argument("--save", default="", help="also write the raw results to this JSON file")
    ap.add_argument("--load", default="",
                    help="comma-separated JSON files of earlier --save runs: write them up as one, run nothing")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    names = [w.strip() for w in args.worlds.split(",") if w.strip()]
    unknown = [n for n in names if n not in W.WORLDS]
    if unknown:
        ap.error(f"unknown worlds {unknown}; known: {list(W.WORLDS)}")
    given = sys.argv[1:] if argv is None else argv
    cmd = shlex.join([".venv/bin/python", "bench/search_efficiency.py", *given])
    if args.load:
        parts = []
        for f in (f for f in args.load.split(",") if f):
            try:
                parts.append(load(Path(f)))
            except (OSError, ValueError, KeyError, TypeError) as e:
                ap.error(f"--load {f}: not a file written by --save ({type(e).__name__}: {e}); run with --save FILE")
        budgets = {p["budget"] for p in parts}
        if len(budgets) != 1:
            ap.error(f"--load: the runs have different budgets {sorted(budgets)}")
        supersede(parts)
    else:
        seeds_gp = min(args.seeds_gp, args.seeds)
        tasks = [(w, m, s, args.budget) for w in names for m in methods
                 for s in range(seeds_gp if m == "gp" else args.seeds)]
        tasks.sort(key=lambda t: t[1] != "gp")  # the slow ones first, so the pool ends evenly
        t0 = time.time()
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers) as ex:
                results = list(ex.map(_run, tasks, chunksize=1))
        else:
            results = [_run(t) for t in tasks]
        parts = [{"command": cmd, "seeds": args.seeds, "seeds_gp": seeds_gp, "budget": args.budget,
                  "workers": args.workers, "elapsed": time.time() - t0, "results": results}]
        if args.save:
            save(Path(args.save), parts[0])
    results = [r for p in parts for r in p["results"]]
    names = list(dict.fromkeys(r.world for r in results))
    methods = [m for m in METHODS if any(r.method == m for r in results)]
    seeds = max(p["seeds"] for p in parts)
    rows = summarise(results, parts[0]["budget"])
    head = header(parts, methods, cmd if args.load else None)
    wtable = markdown(world_rows(names, seeds))
    table = markdown(rows)
    print(head)
    print(wtable + "\n")
    print(table)
    if args.write_docs:
        path = Path(args.write_docs)
        path = path if path.is_absolute() else ROOT / path
        bench = path.parent / "benchmarks.md"
        write_docs(path, f"{head}\nWorlds (calibration over the first {seeds} seeds):\n\n{wtable}\n\n{table}",
                   bench if bench != path else None, benchmark_rows(rows, parts))
        print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} and benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
