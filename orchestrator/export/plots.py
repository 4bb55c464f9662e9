"""Figures of the write-up (matplotlib, Agg canvas only: no display, no global pyplot state).

- ``results``: the constraint metric (val_loss) against the objective (time) of every trial, coloured by
  round, the target as a dashed line; marker shape by kind (search, baseline, confirmation, early exit).
- ``parameters``: each searched parameter against the objective and against the constraint metric.
- ``pick``: the pick rule's variant after each round, its estimated metric with a 90% interval and P(feasible).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from .report import Report

MARKERS = {"search": "o", "baseline": "*", "confirmation": "D", "early_exit": "s"}
LABELS = {"search": "search", "baseline": "baseline", "confirmation": "confirmation", "early_exit": "early exit"}


@dataclass
class Plot:
    name: str  # file-name part: NAME.<name>.png
    caption: str
    png: bytes


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _round_colours(report: Report) -> dict[int, Any]:
    from matplotlib import colormaps

    rounds = sorted({r["round"] for r in report.records})
    cmap = colormaps["tab10"] if len(rounds) <= 10 else colormaps["viridis"].resampled(len(rounds))
    return {n: cmap(i % cmap.N) for i, n in enumerate(rounds)}


def _complete(report: Report) -> list[dict[str, Any]]:
    return [r for r in report.records if r["state"] == "complete" and r["value"] is not None]


def _scatter(ax, report: Report, records: list[dict[str, Any]], xkey: str, ykey: str, colours: dict[int, Any],
             legend: bool | str) -> None:
    seen_rounds: set[int] = set()
    seen_kinds: set[str] = set()
    for r in records:
        x, y = _get(r, xkey), _get(r, ykey)
        if x is None or y is None:
            continue
        kind = r.get("kind", "search")
        hit = bool(r.get("feasible"))
        ax.scatter([x], [y], s=70 if kind == "baseline" else 36, marker=MARKERS.get(kind, "o"),
                   color=colours[r["round"]] if hit else "white", edgecolors=colours[r["round"]], linewidths=1.5,
                   zorder=3)
        seen_rounds.add(r["round"])
        seen_kinds.add(kind)
    if legend:
        _legend(ax, colours, seen_rounds, seen_kinds, figure=(legend == "figure"))


def _legend(ax, colours, seen_rounds, seen_kinds, figure: bool = False) -> None:
    if True:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", linestyle="", color=colours[n], label=f"round {n}" if n else "recovered")
                   for n in sorted(seen_rounds)]
        handles += [Line2D([], [], marker=MARKERS[k], linestyle="", color="0.4", label=LABELS[k])
                    for k in MARKERS if k in seen_kinds and k != "search"]
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="0.4",
                              label="missed the target"))
        if figure:
            ax.figure.legend(handles=handles, fontsize=8, loc="outside upper center", ncols=min(len(handles), 6),
                             frameon=False)
        else:
            ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)


def _get(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _target_line(ax, report: Report, axis: str) -> None:
    c = report.constraint
    if c is None:
        return
    line = ax.axhline if axis == "y" else ax.axvline
    line(c.threshold, color="#c0392b", linestyle="--", linewidth=1.2, zorder=2, label=f"target {c}")
    if axis == "y":
        ax.annotate(f"target {c}", xy=(1, c.threshold), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                    textcoords="offset points", ha="right", va="bottom", fontsize=8, color="#c0392b")


def results_plot(report: Report) -> Plot | None:
    records = _complete(report)
    if not records:
        return None
    colours = _round_colours(report)
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    if report.constraint is not None:
        _scatter(ax, report, records, "value", f"metrics.{report.cmetric}", colours, legend=True)
        _target_line(ax, report, "y")
        ax.set_xlabel(report.metric)
        ax.set_ylabel(report.cmetric)
        caption = f"{report.cmetric} against {report.metric} of every complete trial, coloured by round " \
                  f"(hollow: missed the target; dashed: {report.constraint})"
    else:
        _scatter(ax, report, records, "number", "value", colours, legend=True)
        ax.set_xlabel("trial")
        ax.set_ylabel(report.metric)
        caption = f"{report.metric} of every complete trial, coloured by round"
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{report.name}: every trial", fontsize=11)
    return Plot("results", caption, _png(fig))


def parameter_plot(report: Report) -> Plot | None:
    records = _complete(report)
    params = [n for n in report.searched if any(_get(r, f"params.{n}") is not None for r in records)]
    if not records or not params:
        return None
    colours = _round_colours(report)
    ys = [("value", report.metric)] + ([(f"metrics.{report.cmetric}", report.cmetric)] if report.cmetric else [])
    fig = _figure(4.2 * len(ys), 2.9 * len(params))
    axes = fig.subplots(len(params), len(ys), squeeze=False)
    for i, name in enumerate(params):
        for j, (ykey, ylabel) in enumerate(ys):
            ax = axes[i][j]
            _scatter(ax, report, records, f"params.{name}", ykey, colours, legend="figure" if (i == 0 and j == 0) else False)
            if ykey != "value":
                _target_line(ax, report, "y")
            ax.set_xlabel(name)
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
    caption = "each searched parameter against " + " and ".join(label for _, label in ys) + ", coloured by round"
    return Plot("parameters", caption, _png(fig))


def pick_plot(report: Report) -> Plot | None:
    """The pick rule's answer after each round: the picked variant's estimated metric (90% interval)
    against the target, and its P(feasible)."""
    history = [(r.number, r.estimate) for r in report.rounds if r.estimate is not None and r.estimate.params]
    if not history or report.constraint is None:
        return None
    fig = _figure(8, 3.2)
    ax = fig.subplots(1, 1)
    xs = [n for n, _ in history]
    mean = [e.metric_mean for _, e in history]
    lo = [e.metric_interval[0] for _, e in history]
    hi = [e.metric_interval[1] for _, e in history]
    ax.fill_between(xs, lo, hi, color="#3498db", alpha=0.2, label="90% credible interval")
    ax.plot(xs, mean, "o-", color="#2471a3", label=f"picked variant's {report.cmetric} (model)")
    for n, e in history:
        ax.annotate(f"P={e.p_feasible:.2f}", (n, e.metric_mean), fontsize=7, textcoords="offset points", xytext=(3, 4))
    _target_line(ax, report, "y")
    ax.set_xlabel("after round")
    ax.set_ylabel(report.cmetric or "")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return Plot("pick", "the pick rule's variant after each round: its estimated mean and P(feasible)", _png(fig))


def render_plots(report: Report) -> list[Plot]:
    out = [results_plot(report), parameter_plot(report)]
    out.append(pick_plot(report))
    return [p for p in out if p is not None]
