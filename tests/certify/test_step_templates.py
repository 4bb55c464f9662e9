"""`trainer.steps` in a study file (how `orch study step-cut` tells the trainer its step count): checked when the
study is read, with the file, the field and the fix."""

from __future__ import annotations

import pytest

from orchestrator.config.errors import ConfigError
from orchestrator.config.study import load_study_text
from orchestrator.jobs import build_job, resolve_values

BASE = """trainer:
  command: [python, train.py]
  steps: {steps_block}
parameters:
  lr: {{type: float, low: 0.1, high: 1.0}}
objective: {{minimize: train_time_s, subject_to: ["val_loss <= 3.28"]}}
budget: {{max_trials: 4}}
"""


def test_steps_templates_reach_the_job():
    spec, _ = load_study_text(BASE.format(steps_block='{flags: {--num-steps: "{steps}"}, env: {ITERS: "{steps}"}}'))
    job = build_job(spec, "s", 3, 0, resolve_values(spec, {"lr": 0.5}), environ={}, steps=1400)
    assert job.argv[-2:] == ["--num-steps", "1400"] and job.env["ITERS"] == "1400"
    plain = build_job(spec, "s", 3, 0, resolve_values(spec, {"lr": 0.5}), environ={})
    assert "--num-steps" not in plain.argv and "ITERS" not in plain.env


@pytest.mark.parametrize("block,line,message", [
    ('{flags: {--num-steps: "{stepz}"}}', 3, "unknown name 'stepz'"),
    ("{}", 3, "steps tells the trainer nothing"),
    ('{flags: {num-steps: "{steps}"}}', 3, "is not a command-line flag"),
])
def test_bad_steps_templates_are_refused_with_the_field(block, line, message):
    with pytest.raises(ConfigError) as err:
        load_study_text(BASE.format(steps_block=block), "study.yaml")
    text = str(err.value)
    assert message in text and "trainer.steps" in text and f"study.yaml:{line}" in text and "fix:" in text
