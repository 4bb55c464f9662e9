"""Per-variant statistics of speedrun runs and the record rule.

A *variant* is one parameter setting (e.g. stage fractions 0.36/0.31/0.33); each run of it gives
a (time, metric) pair.  :func:`variant_stats` turns ``{variant: [(time, metric), ...]}`` into
:class:`VariantStats` (runs, means, standard deviations, hit rate, and the one-sided t-test
p-value that the mean metric is below the target, the modded-nanogpt record rule
``scipy.stats.ttest_1samp(losses, 3.28, alternative='less')``, computed by scipy).
:func:`rank_for_confirmation` picks the variants worth confirmation runs.  Pure functions.

Example::

    >>> from orchestrator.analysis.variants import variant_stats, rank_for_confirmation
    >>> runs = {
    ...     (0.36, 0.31, 0.33): [(57.43, 3.283), (57.48, 3.279), (57.38, 3.2798)],
    ...     (0.35, 0.32, 0.33): [(57.67, 3.278), (57.68, 3.281), (57.79, 3.2799)],
    ... }
    >>> stats = variant_stats(runs, target=3.28)
    >>> [(s.variant, s.runs, s.hits, round(s.mean_metric, 4)) for s in stats]
    [((0.36, 0.31, 0.33), 3, 2, 3.2806), ((0.35, 0.32, 0.33), 3, 2, 3.2796)]
    >>> [s.variant for s in rank_for_confirmation(stats, k=2)]  # 0.36: mean above target
    [(0.35, 0.32, 0.33)]
"""

from __future__ import annotations

from collections.abc import Hashable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
import math
from typing import Any
import warnings



__all__ = [
    "VariantStats",
    "group_runs",
    "rank_for_confirmation",
    "student_t_cdf",
    "ttest_1samp_pvalue",
    "variant_stats",
]


@dataclass(frozen=True)
class VariantStats:
    """Statistics of one variant's runs.

    Attributes:
        variant: the variant's key (whatever hashable the caller grouped by).
        runs: number of runs.
        mean_time, std_time: mean and sample standard deviation (ddof=1; 0.0 for one run) of
            the time.
        mean_metric, std_metric: the same for the metric (val_loss, ...).
        hits: runs that met the target (``metric <= target``, or ``>=`` when
            ``direction="above"``).
        hit_rate: ``hits / runs``.
        p_value: one-sided one-sample t-test p-value that the mean metric is below the target
            (above it for ``direction="above"``); ``nan`` with fewer than 2 runs or when all
            runs are equal to the target.
        target: the target the statistics refer to.
        feasible_mean: whether the mean metric meets the target.
        direction: ``"below"`` or ``"above"`` (see :func:`variant_stats`).
    """

    variant: Hashable
    runs: int
    mean_time: float
    std_time: float
    mean_metric: float
    std_metric: float
    hits: int
    hit_rate: float
    p_value: float
    target: float
    feasible_mean: bool
    direction: str = "below"


def group_runs(
    records: Iterable[tuple[Mapping[str, Any] | Hashable, float, float]],
    *,
    digits: int | None = 9,
) -> dict[Hashable, list[tuple[float, float]]]:
    """Group ``(params, time, metric)`` records by variant.

    ``params`` may be a dict (turned into a sorted tuple of ``(name, value)`` pairs, floats
    rounded to ``digits`` so that 0.35 and 0.35000000001 are one variant) or any hashable.
    The order of variants is the order of their first run.
    """
    out: dict[Hashable, list[tuple[float, float]]] = {}
    for params, time, metric in records:
        if isinstance(params, Mapping):
            key: Hashable = tuple(
                sorted(
                    (k, round(v, digits) if isinstance(v, float) and digits is not None else v)
                    for k, v in params.items()
                )
            )
        else:
            key = params
        out.setdefault(key, []).append((float(time), float(metric)))
    return out


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    m = math.fsum(xs) / n
    if n < 2:
        return m, 0.0
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1))


def variant_stats(
    runs: Mapping[Hashable, Sequence[tuple[float, float]]],
    target: float,
    *,
    direction: str = "below",
) -> list[VariantStats]:
    """Statistics per variant, in the mapping's order.

    Args:
        runs: ``{variant: [(time, metric), ...]}`` (see :func:`group_runs`).
        target: the metric's target (3.28 for modded-nanogpt's val_loss).
        direction: ``"below"`` (a hit is ``metric <= target``; the p-value tests mean < target)
            or ``"above"`` (a hit is ``metric >= target``; the p-value tests mean > target).
    """
    if direction not in ("below", "above"):
        raise ValueError(f"direction must be 'below' or 'above', got {direction!r}")
    out = []
    for variant, rs in runs.items():
        if not rs:
            continue
        times = [float(t) for t, _ in rs]
        metrics = [float(m) for _, m in rs]
        mt, st = _mean_std(times)
        mm, sm = _mean_std(metrics)
        if direction == "below":
            hits = sum(1 for m in metrics if m <= target)
            feasible = mm <= target
        else:
            hits = sum(1 for m in metrics if m >= target)
            feasible = mm >= target
        p = ttest_1samp_pvalue(metrics, target, alternative="less" if direction == "below" else "greater")
        out.append(
            VariantStats(
                variant=variant,
                runs=len(rs),
                mean_time=mt,
                std_time=st,
                mean_metric=mm,
                std_metric=sm,
                hits=hits,
                hit_rate=hits / len(rs),
                p_value=p,
                target=float(target),
                feasible_mean=feasible,
                direction=direction,
            )
        )
    return out


def rank_for_confirmation(
    stats: Iterable[VariantStats],
    k: int = 3,
    *,
    min_hit_rate: float = 0.5,
    min_runs: int = 1,
    require_feasible_mean: bool = True,
) -> list[VariantStats]:
    """The best ``k`` variants to confirm: fastest mean time among the eligible ones.

    A variant is eligible when it has at least ``min_runs`` runs, a hit rate of at least
    ``min_hit_rate`` and (with ``require_feasible_mean``) a mean metric that meets the target.
    Ties on mean time go to the higher hit rate, then more runs, then the better mean metric.
    ``rank_for_confirmation(stats, k=1)`` is "the variant a user would pick" from a table of
    runs.
    """
    eligible = [
        s
        for s in stats
        if s.runs >= min_runs
        and s.hit_rate >= min_hit_rate
        and (s.feasible_mean or not require_feasible_mean)
    ]

    def better_metric(s: VariantStats) -> float:
        return s.mean_metric if s.direction == "below" else -s.mean_metric

    eligible.sort(
        key=lambda s: (s.mean_time, -s.hit_rate, -s.runs, better_metric(s), repr(s.variant))
    )
    return eligible[: max(k, 0)]


def ttest_1samp_pvalue(
    sample: Sequence[float], popmean: float, *, alternative: str = "less"
) -> float:
    """p-value of the one-sample t-test: ``scipy.stats.ttest_1samp(...).pvalue``.

    ``alternative="less"`` tests mean < popmean (the modded-nanogpt record rule, p < 0.01
    needed), ``"greater"`` mean > popmean, ``"two-sided"`` mean != popmean.  Returns ``nan``
    for fewer than two values; with zero spread (where scipy has no t statistic) it returns 0 or 1
    when the mean differs from ``popmean`` in the tested way or the other, and ``nan`` when equal.
    """
    import scipy.stats  # here, not at the top: it costs ~0.5 s of every orch command's start
    if alternative not in ("less", "greater", "two-sided"):
        raise ValueError(f"alternative must be 'less', 'greater' or 'two-sided', got {alternative!r}")
    xs = [float(x) for x in sample]
    if len(xs) < 2:
        return math.nan
    m, s = _mean_std(xs)
    if s == 0.0:
        if m == popmean:
            return math.nan
        below = m < popmean
        return {"less": 0.0 if below else 1.0, "greater": 1.0 if below else 0.0, "two-sided": 0.0}[alternative]
    with warnings.catch_warnings():  # nearly equal values: scipy warns, its result is still the t-test's
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(scipy.stats.ttest_1samp(xs, popmean, alternative=alternative).pvalue)


def student_t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` > 0 degrees of freedom (``scipy.stats.t.cdf``)."""
    import scipy.stats  # here, not at the top: it costs ~0.5 s of every orch command's start
    if df <= 0:
        raise ValueError("df must be > 0")
    return float(scipy.stats.t.cdf(t, df))
