"""Replay of the record #78 team's 24 runs (tests/fixtures/reference: the 2026-03-15 stage-shift write-up,
6 rounds of 4 on 4 machines) through the frontier sampler's model and its one pick rule.

After each of their rounds: what the rule would have recommended from the runs so far (the pick, its
P(feasible), the model's val_loss and time with intervals, the time saved against equal thirds, the expected
regret, whether the search would have settled, and how many confirmation runs the record's t-test would
need), and the 4 variants the sampler would have asked for next. The team's own choice is printed beside it.

The search space is the team's: stage1 and stage3 on a 0.01 lattice over the box their runs span
(stage1 0.25-0.50, stage3 0.25-0.50, stage2 = 1 - stage1 - stage3 >= 0.20), the baseline equal thirds; the
rule's settings are the sampler's defaults (level 0.9) with the 0.002 run-to-run noise the write-up states
as a prior.

Usage: ``.venv/bin/python bench/replay_reference.py [--write-docs docs/search.md]``
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import calibration  # noqa: E402
from orchestrator.samplers.frontier import Observation, Param, Rule, SearchSpace  # noqa: E402
from orchestrator.samplers.frontier.acquisition import next_points  # noqa: E402
from orchestrator.samplers.frontier.decision import decide  # noqa: E402
from orchestrator.samplers.frontier.model import fit_model  # noqa: E402

BEGIN = "<!-- replay-reference:begin -->"
END = "<!-- replay-reference:end -->"
BASELINE = {"stage1": 1 / 3, "stage3": 1 / 3}
NOISE_HINT = 0.002
LEVEL = 0.9


def space() -> SearchSpace:
    return SearchSpace([Param("stage1", 0.25, 0.50, 0.01), Param("stage3", 0.25, 0.50, 0.01)],
                       allowed=lambda v: 1.0 - v["stage1"] - v["stage3"] >= 0.20 - 1e-9)


def observations(runs: list[dict]) -> list[Observation]:
    return [Observation({"stage1": r["stage1"], "stage3": r["stage3"]}, r["time_s"], r["val_loss"], r["machine"])
            for r in runs]


def replay(runs: list[dict], seed: int = 0) -> list[dict]:
    """One row per round of the team's: the rule's answer after it and the sampler's next 4 points."""
    sp = space()
    rule = Rule(target=calibration.TARGET, level=LEVEL, noise_hint=NOISE_HINT)
    rows = []
    for rnd in sorted({r["round"] for r in runs}):
        done = [r for r in runs if r["round"] <= rnd]
        obs = observations(done)
        model = fit_model(obs, sp, target=rule.target, noise_hint=rule.noise_hint)
        rec = decide(model, obs, rule, baseline=BASELINE, rng=np.random.default_rng(seed))
        nxt = next_points(model, obs, [], rule, np.random.default_rng(seed + rnd), count=4, baseline=BASELINE)
        theirs = [r for r in runs if r["round"] == rnd + 1]
        rows.append({"round": rnd, "runs": len(done), "rec": rec, "next": nxt, "theirs": theirs})
    return rows


def _shares(p: dict) -> str:
    s1, s3 = p["stage1"], p["stage3"]
    return f"{s1:.2f}/{1 - s1 - s3:.2f}/{s3:.2f}"


def table(rows: list[dict]) -> str:
    head = ("| after round (runs) | pick (stage 1/2/3) | runs of it | P(feasible) | val_loss, 90% interval | "
            "saved vs equal thirds, s (90%) | expected regret, s | settled | confirmation runs (t-test p<0.01) | "
            "next 4 the sampler asks | next 4 the team ran |")
    out = [head, "|" + "|".join([" --- "] * (head.count("|") - 1)) + "|"]
    for r in rows:
        rec = r["rec"]
        nxt = ", ".join(_shares(p) for p in r["next"])
        theirs = ", ".join(f"{t['stage1']:.2f}/{t['stage2']:.2f}/{t['stage3']:.2f}" for t in r["theirs"]) or "-"
        if rec.params is None:
            cells = [f"none yet: {rec.reason}", "-", "-", "-", "-", "-", "no", "-"]
        else:
            lo, hi = rec.metric_interval
            slo, shi = rec.saved_interval
            cells = [_shares(rec.params), str(rec.runs), f"{rec.p_feasible:.2f}",
                     f"{rec.metric_mean:.4f} ({lo:.4f}-{hi:.4f})", f"{rec.saved_mean:+.2f} ({slo:+.2f} to {shi:+.2f})",
                     f"{rec.expected_regret:.2f}", "yes" if rec.settled else "no",
                     str(rec.confirmation_runs) if rec.confirmation_runs else "out of reach"]
        out.append(f"| {r['round']} ({r['runs']}) | " + " | ".join(cells) + f" | {nxt} | {theirs} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-docs", default="", help="markdown file whose marked section gets the table")
    args = ap.parse_args(argv)
    rows = replay(calibration.reference_runs())
    text = (f"Command: `.venv/bin/python bench/replay_reference.py`. Level {LEVEL}, noise prior {NOISE_HINT}, "
            f"baseline equal thirds; the team's record variant is 0.36/0.31/0.33.\n\n{table(rows)}")
    print(text)
    if args.write_docs:
        path = ROOT / args.write_docs
        doc = path.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        doc = (doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]) if BEGIN in doc else (
            doc.rstrip() + "\n\n" + block + "\n")
        path.write_text(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
