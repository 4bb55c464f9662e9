"""The one pick rule over a study's recorded runs (orchestrator/analysis/pick.py)."""

from __future__ import annotations

import numpy as np

from orchestrator.analysis.pick import study_pick
from orchestrator.study.lifecycle import validate_study_file

STUDY = """\
trainer:
  command: ["{{python}}", "-c", "pass"]
parameters:
{parameters}
objective: {{minimize: train_time_s, subject_to: ["val_loss <= 3.28"]}}
sampler: {{name: {sampler}}}
budget: {{max_trials: 8}}
"""


def _spec(tmp_path, parameters: str, sampler: str = "tpe"):
    path = tmp_path / "s.yaml"
    path.write_text(STUDY.format(parameters=parameters, sampler=sampler))
    return validate_study_file(path)[0]


def _record(params: dict, time_s: float, loss: float, machine: str, rnd: int) -> dict:
    rec = {"kind": "search", "state": "complete", "value": time_s, "metrics.val_loss": loss, "machine": machine,
           "round": rnd}
    rec.update({f"params.{k}": v for k, v in params.items()})
    return rec


def test_a_study_with_only_categorical_parameters_has_no_model_pick(tmp_path):
    spec = _spec(tmp_path, '  arch: {type: categorical, choices: ["a", "b"], flag: --arch}')
    records = [_record({"arch": a}, 58.0, 3.279, "m0", 1) for a in ("a", "b")]
    assert study_pick(spec, records) is None  # the write-up falls back to its per-variant table


def test_the_pick_reads_the_rounds_it_is_given(tmp_path):
    spec = _spec(tmp_path, "  stage1: {type: float, low: 0.28, high: 0.42, step: 0.01, flag: --s1}", "frontier")
    rng = np.random.default_rng(0)
    records = []
    for rnd, values in enumerate(([0.28, 0.30, 0.32, 0.34], [0.28, 0.30, 0.32, 0.34], [0.29, 0.31, 0.33, 0.35]), 1):
        for k, s1 in enumerate(values):
            loss = 3.28 + 0.036 * (s1 - 0.345) + rng.normal(0, 0.0017)
            records.append(_record({"stage1": s1}, 60.0 - 20 * s1, loss, f"m{k}", rnd))
    first = study_pick(spec, records, until_round=1)
    full = study_pick(spec, records)
    assert full is not None and full.counts["ok"] == 12 and first.counts["ok"] == 4
    assert full.params is None or full.p_feasible >= full.level
