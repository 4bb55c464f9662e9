"""The text an extra-runs command (`orch study confirm | early-exit | baseline`) prints for its batch's summary
(`extra_runs.summary.batch_summary`): the per-variant table and the per-run table, in markdown."""

from __future__ import annotations

from typing import Any

from .tables import _fmt, md_table


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _pm(mean: float | None, std: float | None, runs: int) -> str:
    if mean is None:
        return ""
    return _fmt(mean) + (f" ± {_fmt(std)}" if runs > 1 and std is not None else "")


def render_summary(summary: dict[str, Any]) -> str:
    kind, metric = summary["kind"], summary["objective"]
    cmetric = summary["target"].split()[0] if summary["target"] else None
    title = {"confirmation": "Confirmation runs", "early_exit": "Early-exit runs", "baseline": "Baseline runs",
             "paired": "Paired timing runs (ABBA blocks)", "step_cut": "Step-cut baseline runs"}[kind]
    lines = [f"{title} of study {summary['study']!r} (batch #{summary['batch']}"
             + (", resumed" if summary["resumed"] else "") + f"; target {summary['target'] or 'none'}):", ""]
    if summary["variants"]:
        cols = ["variant", "runs", "hit rate", f"{metric} mean ± std"]
        cols += [f"{cmetric} mean ± std", f"p ({summary['target']})"] if cmetric else []
        cols += ["all runs: runs", "hit rate", "p"] if cmetric else ["all runs: runs"]
        rows = []
        for v in summary["variants"]:
            b, a = v["batch"], v.get("all_runs")
            label = ",".join(f"{k}={_fmt(x)}" for k, x in v["params"].items())
            cells = [label, str(b["runs"]), f"{b['hits']}/{b['runs']}", _pm(b["mean"], b["std"], b["runs"])]
            if cmetric:
                cells += [_pm(b["mean_metric"], b["std_metric"], b["runs"]), _p(b["p_value"])]
                cells += [str(a["runs"]), f"{a['hits']}/{a['runs']}", _p(a["p_value"])] if a else ["", "", ""]
            else:
                cells += [str(a["runs"]) if a else ""]
            rows.append(cells)
        lines += md_table(cols, rows) + [""]
    cols = ["trial", "machine", "slot", metric, *([cmetric] if cmetric else []), "hit", "state"]
    if kind == "early_exit":
        cols[4 + bool(cmetric):4 + bool(cmetric)] = ["exit step", "exit reason"]
    rows = []
    for r in summary["runs"]:
        cells = [str(r["trial"]), r["machine"] or "", r["slot"] or "", _fmt(r[metric])]
        cells += [_fmt(r[cmetric])] if cmetric else []
        if kind == "early_exit":
            cells += [_fmt(r["steps"]), r["exit_reason"] or ""]
        cells += [{True: "✓", False: "✗"}.get(r["hit"], ""), r["state"] + (f" (retry of {r['retry_of']})"
                                                                          if r["retry_of"] is not None else "")]
        rows.append(cells)
    lines += md_table(cols, rows)
    if summary.get("plan_text"):
        lines += ["", f"Plan (fixed before the first run): {summary['plan_text']}.",
                  f"Decision: {summary['decision']['text']}."]
    if summary.get("certification"):
        lines += ["", "Certification over every confirmation run of the variant: "
                  + summary["certification"]["verdict"]]
    if summary.get("paired"):
        lines += ["", "Paired timing: " + summary["paired"]["text"] + "."]
    if summary.get("step_cut"):
        lines += ["", summary["step_cut"]["text"]]
    complete = [r for r in summary["runs"] if r["state"] == "complete"]
    if kind == "early_exit" and complete:
        early = [r for r in complete if r["exit_reason"] == "early_exit"]
        steps = sorted(int(r["steps"]) for r in complete if r["steps"] is not None)
        mean = sum(r[metric] for r in complete) / len(complete)
        lines += ["", f"{len(early)} of {len(complete)} complete runs stopped at the target; mean {metric} "
                  f"{_fmt(mean)}" + (f", exit step {steps[0]} to {steps[-1]}" if steps else "") + "."]
    return "\n".join(lines)
