"""Fleet and study files: valid ones load; each kind of bad input names the file, the line, the field and a fix."""

from __future__ import annotations

import pytest

from orchestrator.config.errors import ConfigError, OrchError
from orchestrator.config.fleet_file import load_fleet
from orchestrator.config.fleet_file import parse_fleet
from orchestrator.config.yaml_source import load_yaml_text
from orchestrator.study.lifecycle import validate_study_file

GOOD_FLEET = """\
defaults:
  launcher: ssh
  user: speedrun
  known_hosts: ~/.ssh/known_hosts
  container: {runtime: docker, image: "nanogpt:1", env: {A: "1"}}
  labels: {site: west}
machines:
  - name: b200-0
    host: 10.0.0.10
    gpus: 8
    gpu_type: B200
    container: {env: {B: "2"}}
  - name: b200-1
    host: 10.0.0.11
    gpus: 8
    labels: {rack: r2}
"""


def _fleet(text: str):
    return parse_fleet(load_yaml_text(text, "fleet.yaml"))


def test_defaults_are_inherited_and_merged():
    fleet = _fleet(GOOD_FLEET)
    first, second = fleet.machines
    assert first.launcher == "ssh" and first.user == "speedrun" and first.port == 22
    assert first.container.runtime == "docker" and first.container.image == "nanogpt:1"
    assert first.container.env == {"A": "1", "B": "2"}
    assert second.labels == {"site": "west", "rack": "r2"}


def test_embedded_default_is_this_machine_only():
    fleet = load_fleet(None)
    assert [m.name for m in fleet.machines] == ["local"]
    assert fleet.machines[0].launcher == "local" and fleet.machines[0].gpus == "auto"
    assert fleet.machines[0].resolved_cpu_slots() >= 1


@pytest.mark.parametrize("text, line, field, words", [
    ("machines:\n  - name: a\n    lancher: local\n", 3, "machines[0].lancher", "unknown field"),
    ("machines:\n  - host: x\n", 2, "machines[0]", "no name"),
    ("machines:\n  - name: a\n  - name: b\n  - name: a\n", 4, "machines[2].name", "duplicate machine name"),
    ("machines:\n  - name: a\n    gpus: eight\n", 3, "machines[0].gpus", "positive integer"),
    ("machines:\n  - name: a\n    gpus: 0\n", 3, "machines[0].gpus", "positive integer"),
    ("machines:\n  - name: a\n    gpus: -8\n", 3, "machines[0].gpus", "positive integer"),
    ("machines:\n  - name: a\n    launcher: kubernetes\n", 3, "machines[0].launcher", "got 'kubernetes'"),
    ("defaults:\n  launcher: k8s\nmachines:\n  - name: a\n", 2, "defaults.launcher", "got 'k8s'"),
    ("machines:\n  - name: a\n    container: {runtime: lxc, image: x}\n", 3, "machines[0].container.runtime", "docker"),
    ("machines:\n  - name: a\n    container: {runtime: podman}\n", 3, "machines[0].container", "needs an image"),
    ("machines:\n  - name: a\n    launcher: ssh\n", 2, "machines[0]", "known_hosts"),
    ("machines:\n  - name: a\n    launcher: ssh\n    known_hosts: k\n    port: 70000\n", 5, "machines[0].port", "65535"),
    # a field of another launcher: the fix names the launchers that have it
    ("machines:\n  - name: a\n    port: 22\n", 3, "machines[0].port", "a field of the ray and ssh launchers"),
    ("machines:\n  - name: a\n    launcher: slurm\n    ray: {address: 'h:1'}\n", 4, "machines[0].ray", "a field of the ray launcher"),
    ("machines:\n  - name: a\n    launcher: slurm\n    slurm: {sbatch_args: [--output=x]}\n", 4, "machines[0].slurm.sbatch_args",
     "set by the launcher itself"),
    ("machines:\n  - name: a\n    launcher: slurm\n  - name: b\n    launcher: slurm\n    slurm: {node: a}\n", 4,
     "machines[1]", "both node a"),
    ("machines: []\n", 1, "machines", "non-empty"),
    ("defaults:\n  gpus: many\nmachines:\n  - name: a\n", 2, "defaults.gpus", "positive integer"),
    ("machine:\n  - name: a\n", 1, "machine", "unknown field"),
    ("machines:\n  - name: a\n    name: b\n", 3, None, "duplicate key"),
    ("machines:\n  - name: a\n   gpus: 8\n", 3, None, "not valid YAML"),
])
def test_bad_fleet_names_line_field_and_fix(text, line, field, words):
    with pytest.raises(ConfigError) as info:
        _fleet(text)
    error = info.value
    assert error.file == "fleet.yaml"
    assert error.line == line
    if field:
        assert error.field == field
    assert words in str(error)
    assert error.fix, f"no fix in: {error}"


GOOD_STUDY = """\
trainer:
  command: ["{python}", "-m", "trainer"]
parameters:
  stage1: {type: float, low: 0.2, high: 0.6, step: 0.02}
  stage2: {type: float, low: 0.1, high: 0.34, step: 0.02}
derived:
  stage3: {expr: "1 - stage1 - stage2", min: 0.05}
arguments:
  flags: {--stage-durations: "{stage1:.4f},{stage2:.4f},{stage3:.4f}"}
objective:
  minimize: train_time_s
  subject_to: ["val_loss <= 3.28"]
budget: {max_trials: 6}
"""


def _study(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return validate_study_file(path)


def test_good_study(tmp_path):
    spec, _ = _study(tmp_path, GOOD_STUDY)
    assert spec.objective.metric == "train_time_s"
    assert [str(c) for c in spec.objective.constraints] == ["val_loss <= 3.28"]
    assert spec.all_names() == ["stage1", "stage2", "stage3"]


@pytest.mark.parametrize("old, new, field, words", [
    ("budget: {max_trials: 6}", "budget: {max_trials: 6, paralel: 2}", "budget.paralel", "unknown field"),
    ("low: 0.2, high: 0.6", "low: 0.6, high: 0.2", "parameters.stage1", "range is empty"),
    ("low: 0.2, high: 0.6", "low: 0.2, high: 0.61", "parameters.stage1", "whole number of steps"),
    ('"1 - stage1 - stage2"', '"1 - stage1 - stage4"', "derived.stage3.expr", "unknown name 'stage4'"),
    ('"1 - stage1 - stage2"', '"__import__(\'os\')"', "derived.stage3.expr", "only the functions"),
    ("minimize: train_time_s", "minimize: wall_clock", "objective.minimize", "never printed"),
    ('"val_loss <= 3.28"', '"val_bpb <= 1.2"', "objective.subject_to", "never printed"),
    ('"val_loss <= 3.28"', '"val_loss < 3.28"', "objective", "malformed"),
    ("{max_trials: 6}", "{max_trials: 0}", "budget.max_trials", "greater than or equal to 1"),
    ("type: float, low: 0.2", "type: decimal, low: 0.2", "parameters.stage1.type", "float"),
    ('"{stage1:.4f},', '"{stage9:.4f},', "arguments.flags.--stage-durations", "unknown name 'stage9'"),
    ("trainer:\n", "trainer:\n  log_format: tensorboard\n", "trainer.log_format", "unknown log format"),
])
def test_bad_study_names_line_field_and_fix(tmp_path, old, new, field, words):
    assert old in GOOD_STUDY
    with pytest.raises(ConfigError) as info:
        _study(tmp_path, GOOD_STUDY.replace(old, new, 1))
    error = info.value
    assert error.file.endswith("s.yaml") and error.line is not None
    assert error.field == field
    assert words in str(error)
    assert error.fix


def test_study_that_is_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"s\.yaml:3: not valid YAML"):
        _study(tmp_path, "trainer:\n  command: [unclosed\nparameters: {}\n")


def test_study_that_is_a_list(tmp_path):
    with pytest.raises(OrchError, match="expected a mapping"):
        _study(tmp_path, "- a\n- b\n")


@pytest.mark.parametrize("choices", [["a"], ["a", "b"], ["a", "b", "c"]])
def test_a_grid_that_is_used_up_by_the_create_time_dry_run_is_still_a_good_study(tmp_path, choices):
    """The create-time sampler check asks the grid sampler for two points; a grid of one or two points is used up
    by then, and Optuna's GridSampler stops the study, which outside an optimize loop raises."""
    text = f"""\
trainer:
  command: ["{{python}}", "-c", "pass"]
parameters:
  value: {{type: categorical, choices: {choices}, flag: --value}}
objective: {{minimize: train_time_s}}
sampler: {{name: grid, seed: 0}}
budget: {{max_trials: {len(choices)}}}
"""
    spec, _ = _study(tmp_path, text)
    assert spec.sampler.name == "grid"


@pytest.mark.parametrize("sampler, constraint, expected", [
    ("frontier", True, "fail"),  # the frontier sampler reads the exit reason itself
    ("tpe", True, "infeasible"),  # Optuna's samplers learn from a violated constraint, not from a FAIL
    ("gp", True, "infeasible"),
    ("tpe", False, "fail"),  # nothing to violate
])
def test_a_crash_or_divergence_reaches_every_sampler_as_information_by_default(tmp_path, sampler, constraint, expected):
    from orchestrator.study.outcomes import failure_policy

    subject = ', subject_to: ["val_loss <= 3.28"]' if constraint else ""
    text = f"""\
trainer:
  command: ["{{python}}", "-c", "pass"]
parameters:
  stage1: {{type: float, low: 0.28, high: 0.42, step: 0.01, flag: --s1}}
objective: {{minimize: train_time_s{subject}}}
sampler: {{name: {sampler}}}
budget: {{max_trials: 4}}
"""
    spec, _ = _study(tmp_path, text)
    assert spec.on_failure.crashed == "auto" and spec.on_failure.diverged == "auto"
    assert failure_policy(spec, "crashed") == failure_policy(spec, "diverged") == expected
    assert failure_policy(spec, "timeout") == "fail"  # a timeout or a lost machine says nothing about the schedule
    explicit, _ = _study(tmp_path, text + "on_failure: {crashed: retry}\n")
    assert failure_policy(explicit, "crashed") == "retry"


def test_defaults_apply_to_the_machines_whose_launcher_has_the_field():
    """`defaults:` may hold any launcher's fields; each machine takes those its launcher's model has."""
    fleet = _fleet("defaults:\n  user: speedrun\n  known_hosts: k\n  slurm: {partition: gpu}\n  gpus: 8\n"
                   "machines:\n  - name: here\n  - name: there\n    launcher: ssh\n"
                   "  - name: node1\n    launcher: slurm\n    slurm: {account: lab}\n")
    here, there, node1 = fleet.machines
    assert (type(here).__name__, type(there).__name__, type(node1).__name__) == ("LocalMachine", "SshMachine",
                                                                                 "SlurmMachine")
    assert not hasattr(here, "user") and there.user == "speedrun" and here.gpus == there.gpus == node1.gpus == 8
    assert (node1.slurm.partition, node1.slurm.account, node1.node) == ("gpu", "lab", "node1")  # merged key by key
