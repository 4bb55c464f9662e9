"""The tracks' record rules as plug-ins: each track names its metric and the value its test is read against,
runs its statistical test over the counted runs (orchestrator/certify/rules.py does the arithmetic) and checks every
counted run against the limits its rules list. Each track owns its settings (a pydantic model); `TRACKS` is
the one registry.

| track | test over the counted runs | per-run checks |
| --- | --- | --- |
| modded-nanogpt | one-sided t-test: mean val_loss < target at p < 0.01 | no extra torch._inductor.config / torch.compile flags (rule 3) |
| parameter-golf | mean val_loss beats the best by >= 0.005 nats, one-sided t-test at p < 0.01 | artifact <= 16,000,000 B; training <= 600 s (+ the step in flight); evaluation <= 600 s |
| nanochat | CORE > 0.256525 (one run); mean CORE above it at p < 0.01 (several) | CORE and total_training_time reported |
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from pydantic import BaseModel, ConfigDict, Field

from . import rules


class CertifyError(ValueError):
    """The evidence cannot be judged as asked (a setting is missing, a track is unknown); says the fix."""


class TrackSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(default=0.01, gt=0, lt=0.5)


@dataclass(frozen=True)
class TrackTest:
    """The track's test over the counted runs."""

    track: str
    rule: str  # the rule in words, e.g. "mean val_loss < 3.28 at p < 0.01 (one-sided one-sample t-test)"
    test: str  # the test used (for the statistics file)
    metric: str
    null_value: float  # the value the mean is tested against
    below: bool  # True: the mean must be below null_value
    alpha: float
    n: int
    mean: float | None
    std: float | None
    p_value: float | None
    passed: bool
    explanation: str


@dataclass(frozen=True)
class RuleCheck:
    """One rule checked on one run (trial None: a check of the whole submission)."""

    rule: str
    trial: int | None
    passed: bool | None  # None: not checkable from what the run recorded
    detail: str


def _metric(record: dict[str, Any], name: str) -> float | None:
    value = record.get(f"metrics.{name}")
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class Track:
    name: ClassVar[str]
    Settings: ClassVar[type[TrackSettings]]
    metric: ClassVar[str]
    below: ClassVar[bool]
    layout: ClassVar[str]  # where the track's repository keeps record folders

    def null_value(self, settings: TrackSettings, study_target: float | None) -> float:
        raise NotImplementedError

    def rule_text(self, settings: TrackSettings, null: float) -> str:
        raise NotImplementedError

    def test(self, values: Sequence[float], settings: TrackSettings, null: float) -> TrackTest:
        raise NotImplementedError

    def run_checks(self, record: dict[str, Any], settings: TrackSettings) -> list[RuleCheck]:
        return []


# ----------------------------------------------------------------------------------------------------- modded-nanogpt
class ModdedNanoGPTSettings(TrackSettings):
    #: the val_loss the mean must be below; None: the study's constraint threshold (3.28 on the main track, 2.92 on
    #: the medium one), else 3.28
    target: float | None = None


#: rule 3 of modded-nanogpt's README: no extra torch._inductor.config or torch.compile flags
_INDUCTOR = re.compile(r"torch\._inductor\.config\.\w+\s*=|torch\.compile\([^)]*\b(mode|options|fullgraph|dynamic)\s*=")


class ModdedNanoGPT(Track):
    name = "modded-nanogpt"
    Settings = ModdedNanoGPTSettings
    metric = "val_loss"
    below = True
    layout = "records/track_1_short/DATE_NAME/ (this_pr/ and baseline/: one log per run and statistics.md)"

    def null_value(self, settings: ModdedNanoGPTSettings, study_target: float | None) -> float:
        if settings.target is not None:
            return settings.target
        return study_target if study_target is not None else rules.MODDED_NANOGPT_TARGET

    def rule_text(self, settings: TrackSettings, null: float) -> str:
        return f"mean val_loss < {null:g} at p < {settings.alpha:g} (one-sided one-sample t-test over every counted run)"

    def test(self, values: Sequence[float], settings: TrackSettings, null: float) -> TrackTest:
        check = rules.check_modded_nanogpt(values, target=null, alpha=settings.alpha)
        return TrackTest(self.name, self.rule_text(settings, null), "scipy.stats.ttest_1samp(losses, "
                         f"{null:g}, alternative='less')", self.metric, null, True, settings.alpha, check.n, check.mean,
                         check.std, check.p_value, check.passed, check.explanation)

    def run_checks(self, record: dict[str, Any], settings: TrackSettings) -> list[RuleCheck]:
        added = [line[1:] for line in (record.get("injection_diff") or "").splitlines()
                 if line.startswith("+") and not line.startswith("+++")]
        env = record.get("env") or {}
        if isinstance(env, str):
            import json

            env = json.loads(env)
        flags = [line.strip() for line in added if _INDUCTOR.search(line)]
        flags += [f"env {k}" for k in env if k.startswith("TORCHINDUCTOR_")]
        rule = "no extra torch._inductor.config or torch.compile flags (modded-nanogpt rule 3)"
        return [RuleCheck(rule, record["number"], not flags, "none" if not flags else "; ".join(flags)[:200])]


# ----------------------------------------------------------------------------------------------------- parameter-golf
class ParameterGolfSettings(TrackSettings):
    #: val_loss (nats) of the current best record: the mean must beat it by `min_improvement`
    best_score: float | None = None
    min_improvement: float = rules.PARAMETER_GOLF_MIN_IMPROVEMENT
    max_artifact_bytes: int = rules.PARAMETER_GOLF_MAX_ARTIFACT_BYTES
    max_train_time_s: float = rules.PARAMETER_GOLF_MAX_TRAIN_TIME_S
    max_eval_time_s: float = 600.0


class ParameterGolf(Track):
    name = "parameter-golf"
    Settings = ParameterGolfSettings
    metric = "val_loss"
    below = True
    layout = "records/track_10min_16mb/DATE_NAME/ (README.md, submission.json, train_gpt.py, train_seedN.log)"

    def null_value(self, settings: ParameterGolfSettings, study_target: float | None) -> float:
        if settings.best_score is None:
            raise CertifyError("parameter-golf needs the current best record's val_loss (nats) to test against "
                               "(fix: pass --best-score X, e.g. --best-score 2.3220)")
        return settings.best_score - settings.min_improvement

    def rule_text(self, settings: ParameterGolfSettings, null: float) -> str:
        return (f"mean val_loss below the best {settings.best_score:g} by >= {settings.min_improvement:g} nats at "
                f"p < {settings.alpha:g} (one-sided t-test against {null:g}), artifact <= "
                f"{settings.max_artifact_bytes:,} B, training and evaluation <= {settings.max_train_time_s:g} s")

    def test(self, values: Sequence[float], settings: ParameterGolfSettings, null: float) -> TrackTest:
        gain = rules.parameter_golf_improvement(values, settings.best_score, min_improvement=settings.min_improvement,
                                                alpha=settings.alpha)
        passed = all(gain.checks.values()) and gain.n >= 2
        reasons = gain.reasons + ([] if gain.n >= 2 else ["one run cannot show p < 0.01"])
        explanation = (f"{'passes' if passed else 'fails'}: mean val_loss {gain.mean:.5f} (n={gain.n}), improvement "
                       f"{gain.improvement:.5f} nats over {settings.best_score:g}"
                       + (f", one-sided p={gain.p_value:.2g}" if gain.p_value is not None else "")
                       + ("" if passed else " (" + "; ".join(reasons) + ")"))
        return TrackTest(self.name, self.rule_text(settings, null), "scipy.stats.ttest_1samp(val_losses, "
                         f"{null:g}, alternative='less')", self.metric, null, True, settings.alpha, gain.n, gain.mean,
                         gain.std, gain.p_value, passed, explanation)

    def run_checks(self, record: dict[str, Any], settings: ParameterGolfSettings) -> list[RuleCheck]:
        number = record["number"]
        artifact = _metric(record, "artifact_bytes")
        time_ms = _metric(record, "train_time_ms")
        if time_ms is None and _metric(record, "train_time_s") is not None:
            time_ms = _metric(record, "train_time_s") * 1000.0
        check = rules.check_parameter_golf(
            int(artifact) if artifact is not None else None, time_ms / 1000.0 if time_ms is not None else None,
            max_artifact_bytes=settings.max_artifact_bytes, max_train_time_s=settings.max_train_time_s,
            step_ms=_metric(record, "step_avg_ms"))
        out = [RuleCheck(f"artifact <= {settings.max_artifact_bytes:,} bytes (code + compressed model)", number,
                         check.checks["artifact_size"],
                         f"{int(artifact):,} B" if artifact is not None else "no artifact size in the log"),
               RuleCheck(f"training <= {settings.max_train_time_s:g} s (the step in flight at the cap allowed)", number,
                         check.checks["train_time"], f"{time_ms / 1000:.3f} s" if time_ms is not None else
                         "no training time in the log")]
        eval_s = _metric(record, "eval_time_s")
        if eval_s is None and _metric(record, "eval_time_ms") is not None:
            eval_s = _metric(record, "eval_time_ms") / 1000.0
        out.append(RuleCheck(f"evaluation <= {settings.max_eval_time_s:g} s", number,
                             None if eval_s is None else eval_s <= settings.max_eval_time_s,
                             "not in the log (not checked)" if eval_s is None else f"{eval_s:.1f} s"))
        return out


# ----------------------------------------------------------------------------------------------------- nanochat
class NanochatSettings(TrackSettings):
    threshold: float = rules.NANOCHAT_CORE_THRESHOLD


class Nanochat(Track):
    name = "nanochat"
    Settings = NanochatSettings
    metric = "core_metric"
    below = False
    layout = "a leaderboard row and a `## Run N` entry of dev/LEADERBOARD.md (launch command, result block)"

    def null_value(self, settings: NanochatSettings, study_target: float | None) -> float:
        return settings.threshold

    def rule_text(self, settings: NanochatSettings, null: float) -> str:
        return (f"CORE > {null:g} (the leaderboard's rule for one run); with several counted runs, their mean above "
                f"it at p < {settings.alpha:g} (one-sided t-test)")

    def test(self, values: Sequence[float], settings: NanochatSettings, null: float) -> TrackTest:
        check = rules.check_nanochat_runs(values, null, settings.alpha)
        n = len(values)
        std = None
        p = None
        if n >= 2:
            test = rules.one_sided_t_test(values, null, below=False)
            std, p = test.std, test.p_value
        used = ("CORE > threshold (one run)" if n == 1 else
                f"scipy.stats.ttest_1samp(core, {null:g}, alternative='greater')")
        return TrackTest(self.name, self.rule_text(settings, null), used, self.metric, null, False, settings.alpha, n,
                         check.core_metric, std, p, check.passed, check.explanation)

    def run_checks(self, record: dict[str, Any], settings: NanochatSettings) -> list[RuleCheck]:
        number = record["number"]
        core = _metric(record, "core_metric")
        time_s = _metric(record, "train_time_s")
        return [RuleCheck("CORE reported", number, core is not None, f"{core:.4f}" if core is not None else "no CORE"),
                RuleCheck("total_training_time reported", number, time_s is not None,
                          f"{time_s:.1f} s" if time_s is not None else "no training time")]


TRACKS: dict[str, Track] = {t.name: t for t in (ModdedNanoGPT(), ParameterGolf(), Nanochat())}


def get_track(name: str) -> Track:
    if name not in TRACKS:
        raise CertifyError(f"unknown track {name!r} (fix: use one of {', '.join(TRACKS)})")
    return TRACKS[name]


def track_settings(track: Track, values: dict[str, Any] | None = None) -> TrackSettings:
    try:
        return track.Settings.model_validate(values or {})
    except ValueError as exc:
        raise CertifyError(f"track {track.name} settings: {exc}") from None


@dataclass
class TrackChoice:
    """Which track judges a study, and how that was decided."""

    track: Track
    settings: TrackSettings
    how: str
    extra: dict[str, Any] = field(default_factory=dict)
