"""Analysis of finished runs: per-variant statistics and the record rule (``variants``); a study's records,
kinds and variant ranking read from the database (``results``)."""

from orchestrator.analysis.variants import VariantStats
from orchestrator.analysis.variants import group_runs
from orchestrator.analysis.variants import rank_for_confirmation
from orchestrator.analysis.variants import student_t_cdf
from orchestrator.analysis.variants import ttest_1samp_pvalue
from orchestrator.analysis.variants import variant_stats


__all__ = [
    "VariantStats",
    "group_runs",
    "rank_for_confirmation",
    "student_t_cdf",
    "ttest_1samp_pvalue",
    "variant_stats",
]
