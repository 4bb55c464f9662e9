"""Search efficiency on the simulated stage-duration problem (see bench/_sim.py).

For each method and seed, a fleet of 4 machines runs rounds of 4 trials up to ``--budget``;
after every round the variant picked by each rule of ``_sim.RULES`` (``table``: a user's pick from
the table of runs; ``model``: the same table smoothed with the known noise; ``own``: the method's
own answer) is judged against the simulator's truth.  Reported per rule and method:

* trials to target: the number of trials after which every later pick (up to the budget) is
  feasible and within 0.3 s of the best feasible variant's true mean time (median, 90th
  percentile; ``>B`` when not reached within the budget B);
* success and wrong-pick rates (pick infeasible: true hit probability < 0.5) at 8 and 24
  trials (the record took 24) and at the budget;
* for the bisection sampler, trials until ``is_converged``.

Usage::

    .venv/bin/python bench/search_efficiency.py                 # 200 seeds, budget 40, 2 workers
    .venv/bin/python bench/search_efficiency.py --seeds 20 --write-docs ''   # quick look

Writes the table and the exact command into docs/search.md (between markers) unless
``--write-docs ''``.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
import math
import os
from pathlib import Path
import sys
import time

import numpy as np


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _sim  # noqa: E402


BEGIN = "<!-- search-efficiency:begin -->"
END = "<!-- search-efficiency:end -->"


def _run(task: tuple[str, int, int]) -> _sim.SeedResult:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")
    method, seed, budget = task
    return _sim.simulate(method, seed, budget)


def _fmt_trials(x: float, budget: int) -> str:
    return f">{budget}" if math.isinf(x) else f"{x:.0f}"


def summarise(results: list[_sim.SeedResult], budget: int) -> list[dict[str, str]]:
    rows = []
    methods = list(dict.fromkeys(r.method for r in results))
    for rule in _sim.RULES:
        for m in methods:
            rs = [r for r in results if r.method == m]
            tt = np.array([r.trials_to_target(rule) for r in rs])
            idx = {c: i for i, c in enumerate(rs[0].checkpoints)}

            def rate(kind: str, n: int) -> str:
                i = idx.get(n)
                if i is None:
                    return "-"
                return f"{100 * np.mean([getattr(r, kind)[rule][i] for r in rs]):.0f}%"

            conv = [r.converged_at for r in rs if r.converged_at is not None]
            rows.append(
                {
                    "rule": rule,
                    "method": m,
                    "median trials": _fmt_trials(float(np.percentile(tt, 50, method="higher")), budget),
                    "p90 trials": _fmt_trials(float(np.percentile(tt, 90, method="higher")), budget),
                    "success@8": rate("success", 8),
                    "success@24": rate("success", 24),
                    f"success@{budget}": rate("success", budget),
                    "wrong@8": rate("wrong", 8),
                    "wrong@24": rate("wrong", 24),
                    f"wrong@{budget}": rate("wrong", budget),
                    "converged (median trials)": (
                        f"{np.median(conv):.0f} ({100 * len(conv) / len(rs):.0f}% of seeds)"
                        if conv
                        else "-"
                    ),
                }
            )
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "|".join(" --- " for _ in keys) + "|"]
    out += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--budget", type=int, default=40, help="trials per seed (multiple of 4)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--methods", default=",".join(_sim.METHODS))
    ap.add_argument("--write-docs", default=str(ROOT / "docs" / "search.md"),
                    help="markdown file whose marked section gets the table ('' to skip)")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tasks = [(m, s, args.budget) for m in methods for s in range(args.seeds)]
    t0 = time.time()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as ex:
            results = list(ex.map(_run, tasks, chunksize=4))
    else:
        results = [_run(t) for t in tasks]
    elapsed = time.time() - t0
    rows = summarise(results, args.budget)
    cal = _sim.calibrate()
    table = markdown(rows)
    cmd = "cd /work/main && .venv/bin/python bench/search_efficiency.py" + (
        "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    header = (
        f"Command: `{cmd}`  \n"
        f"{args.seeds} seeds x {len(methods)} methods, budget {args.budget} trials in rounds of "
        f"{_sim.MACHINES}, {args.workers} workers, {elapsed:.0f} s.  World: loss quadratic "
        f"fitted to the 24 reference runs (rms {cal.loss_rms:.4f}), per-seed offset "
        f"N(0, {_sim.OFFSET_SD}), run noise {_sim.NOISE_LOSS} (common random numbers); time "
        f"overhead {cal.overhead_s:.2f} s.  Rules: `table` (user's pick), `model` (local-linear "
        f"smoothing, noise {_sim.RULE_NOISE}, P(feasible) >= {_sim.RULE_CONFIDENCE}), `own` (each "
        f"method's own answer; reference only).\n"
    )
    print(header)
    print(table)
    if args.write_docs:
        path = Path(args.write_docs)
        text = path.read_text() if path.exists() else ""
        block = f"{BEGIN}\n{header}\n{table}\n{END}"
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        path.write_text(text)
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
