"""Per-variant statistics and the record rule against known values."""

from __future__ import annotations

import math
import statistics

import pytest

from orchestrator.analysis.variants import VariantStats
from orchestrator.analysis.variants import group_runs
from orchestrator.analysis.variants import rank_for_confirmation
from orchestrator.analysis.variants import student_t_cdf
from orchestrator.analysis.variants import ttest_1samp_pvalue
from orchestrator.analysis.variants import variant_stats


def _closed_form_cdf(t: float, df: int) -> float:
    """Student-t CDFs with elementary closed forms (df = 1..4)."""
    if df == 1:
        return 0.5 + math.atan(t) / math.pi
    if df == 2:
        return 0.5 + t / (2 * math.sqrt(2 + t * t))
    if df == 3:
        return 0.5 + (t / (math.sqrt(3) * (1 + t * t / 3)) + math.atan(t / math.sqrt(3))) / math.pi
    if df == 4:
        return 0.5 + 0.375 * (t / math.sqrt(1 + t * t / 4)) * (1 - t * t / (12 * (1 + t * t / 4)))
    raise ValueError(df)


@pytest.mark.parametrize("df", [1, 2, 3, 4])
@pytest.mark.parametrize("t", [-12.0, -3.0, -1.0, -0.25, 0.0, 0.5, 2.0, 7.5])
def test_student_t_cdf_matches_closed_forms(t: float, df: int) -> None:
    assert student_t_cdf(t, df) == pytest.approx(_closed_form_cdf(t, df), abs=1e-12)


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [
        # two-sided critical values from t tables: P(T <= t) = p
        (2.228138851986274, 10, 0.975),
        (3.364929998907218, 5, 0.99),
        (1.697260886571, 30, 0.95),
    ],
)
def test_student_t_cdf_table_values(t: float, df: int, p: float) -> None:
    assert student_t_cdf(t, df) == pytest.approx(p, abs=1e-9)


def test_student_t_cdf_tends_to_normal() -> None:
    assert student_t_cdf(1.959963984540054, 1e9) == pytest.approx(0.975, abs=1e-7)
    assert student_t_cdf(-math.inf, 3) == 0.0 and student_t_cdf(math.inf, 3) == 1.0
    with pytest.raises(ValueError):
        student_t_cdf(1.0, 0)


def test_ttest_pvalue_by_hand() -> None:
    sample = [1.0, 2.0, 3.0, 4.0, 5.0]
    t = (3.0 - 5.0) / (statistics.stdev(sample) / math.sqrt(5))  # -2.828...
    assert ttest_1samp_pvalue(sample, 5.0) == pytest.approx(_closed_form_cdf(t, 4), abs=1e-12)
    assert ttest_1samp_pvalue(sample, 5.0, alternative="greater") == pytest.approx(
        1 - _closed_form_cdf(t, 4), abs=1e-12
    )
    assert ttest_1samp_pvalue(sample, 5.0, alternative="two-sided") == pytest.approx(
        2 * _closed_form_cdf(t, 4), abs=1e-12
    )
    assert math.isnan(ttest_1samp_pvalue([3.27], 3.28))
    assert ttest_1samp_pvalue([3.27, 3.27], 3.28) == 0.0
    assert ttest_1samp_pvalue([3.29, 3.29], 3.28) == 1.0
    with pytest.raises(ValueError):
        ttest_1samp_pvalue(sample, 5.0, alternative="less-ish")


def test_ttest_matches_scipy_when_available() -> None:
    stats = pytest.importorskip("scipy.stats", reason="scipy not installed: pip install -e '.[dev]'")
    losses = [3.2798, 3.2794, 3.2799, 3.2787, 3.2779, 3.2801, 3.2776]
    expected = stats.ttest_1samp(losses, 3.28, alternative="less").pvalue
    assert ttest_1samp_pvalue(losses, 3.28) == pytest.approx(expected, rel=1e-9)


def test_variant_stats_on_record_runs() -> None:
    # Reference rounds 4-6: variant 0.36/0.31/0.33 and 0.35/0.32/0.33.
    t_runs = [(57.4, 3.280), (57.43, 3.283), (57.48, 3.279), (57.382, 3.2798), (57.476, 3.2794),
              (57.433, 3.2826)]
    s_runs = [(57.7, 3.279), (57.67, 3.278), (57.68, 3.281), (57.794, 3.2799)]
    out = variant_stats({"T": t_runs, "S": s_runs}, target=3.28)
    assert [s.variant for s in out] == ["T", "S"]
    t, s = out
    assert t.runs == 6 and t.hits == 4 and t.hit_rate == pytest.approx(4 / 6)
    assert t.mean_metric == pytest.approx(statistics.mean(m for _, m in t_runs), abs=1e-12)
    assert t.std_metric == pytest.approx(statistics.stdev(m for _, m in t_runs), abs=1e-12)
    assert t.mean_time == pytest.approx(statistics.mean(x for x, _ in t_runs), abs=1e-12)
    assert not t.feasible_mean  # 3.28063 > 3.28
    assert t.p_value > 0.5
    assert s.hits == 3 and s.feasible_mean and s.p_value < 0.5
    tt = (s.mean_metric - 3.28) / (s.std_metric / 2.0)
    assert s.p_value == pytest.approx(_closed_form_cdf(tt, 3), abs=1e-12)


def test_variant_stats_above_direction() -> None:
    (v,) = variant_stats({"x": [(10.0, 0.25), (11.0, 0.27), (12.0, 0.26)]}, 0.2565, direction="above")
    assert v.hits == 2 and v.feasible_mean and v.p_value < 0.5 and v.std_time == pytest.approx(1.0)
    with pytest.raises(ValueError):
        variant_stats({"x": [(1.0, 1.0)]}, 1.0, direction="sideways")


def _vs(name: str, time: float, metric: float, runs: int, hits: int) -> VariantStats:
    return VariantStats(name, runs, time, 0.0, metric, 0.0, hits, hits / runs, math.nan, 3.28,
                        metric <= 3.28)


def test_rank_for_confirmation_eligibility_and_order() -> None:
    stats = [
        _vs("fast-miss", 55.0, 3.285, 2, 0),
        _vs("fast-lucky", 55.5, 3.2805, 2, 1),  # hit rate 0.5 but mean above target
        _vs("a", 57.0, 3.279, 2, 1),
        _vs("b", 56.5, 3.2795, 3, 2),
        _vs("b-tie", 56.5, 3.2790, 3, 3),  # same time, better hit rate first
        _vs("slow", 59.0, 3.270, 1, 1),
    ]
    ranked = rank_for_confirmation(stats, k=3)
    assert [s.variant for s in ranked] == ["b-tie", "b", "a"]
    assert [s.variant for s in rank_for_confirmation(stats, k=10, min_runs=2)] == ["b-tie", "b", "a"]
    loose = rank_for_confirmation(stats, k=1, require_feasible_mean=False)
    assert loose[0].variant == "fast-lucky"
    assert rank_for_confirmation(stats, k=0) == []


def test_group_runs_merges_float_noise() -> None:
    grouped = group_runs(
        [({"s1": 0.35, "s3": 0.33}, 57.6, 3.279), ({"s3": 0.33, "s1": 0.35000000000001}, 57.7, 3.281),
         ((0.36, 0.33), 57.4, 3.28)]
    )
    assert list(grouped.values()) == [[(57.6, 3.279), (57.7, 3.281)], [(57.4, 3.28)]]
