"""Studies of external trainers end to end: parameters injected the trainer's own way (a syntax-tree patch of
modded-nanogpt's script, parameter-golf's env vars), logs read by that trainer's adapter. The trainers are
stand-ins printing the real formats (tests/helpers): the real scripts need 8 GPUs and their datasets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from db import Database
from orchestrator.config.errors import OrchError
from orchestrator.config.fleet_file import load_fleet
from orchestrator.run.controller import Controller
from orchestrator.study.lifecycle import create_study
from tests.conftest import REPO, orch

from ._checks import assert_agrees_with_optuna

HELPERS = REPO / "tests" / "helpers"


def _run(tmp_path, monkeypatch, spec: dict):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    db = Database(f"sqlite:///{tmp_path / 'orch.db'}")
    create_study(db, "s", path)
    Controller(db, "s", load_fleet(None), heartbeat_s=0.5).run()
    return assert_agrees_with_optuna(db, "s")


def test_modded_nanogpt_study_patches_the_script_per_trial(tmp_path, monkeypatch):
    spec = {
        "trainer": {"command": ["{python}", "train_gpt.py"], "log_format": "modded-nanogpt",
                    "inject": {"name": "modded-nanogpt",
                               "options": {"script": str(HELPERS / "stand_in_modded_nanogpt.py"), "output": "train_gpt.py"},
                               "map": {"stage1": "stages[0].duration", "stage2": "stages[1].duration",
                                       "stage3": "stages[2].duration", "data_seed": "SEED"}}},
        "parameters": {"stage1": {"type": "float", "low": 0.30, "high": 0.40, "step": 0.01},
                       "stage2": {"type": "float", "low": 0.28, "high": 0.34, "step": 0.01},
                       "data_seed": {"type": "int", "low": 0, "high": 1000}},
        "derived": {"stage3": {"expr": "1 - stage1 - stage2", "min": 0.2}},
        "objective": {"minimize": "train_time_s", "subject_to": ["val_loss <= 3.28"]},
        "sampler": {"name": "random", "seed": 1}, "budget": {"max_trials": 4, "parallel": 2},
    }
    rows = _run(tmp_path, monkeypatch, spec)
    assert [r.state for r in rows] == ["complete"] * 4
    for row in rows:
        p = row.params
        assert f"duration={p['stage1']!r}" in row.injection_diff and f"duration={p['stage3']!r}" in row.injection_diff
        log = Path(row.log_path).read_text()
        assert f"TrainingStage(duration={p['stage1']!r}, batch_size=8 * 2048 * 8" in log  # the patched copy ran
        # the stand-in's time model: 1450 scheduled steps split by the durations, 40 extension steps at stage 3 cost
        bounds = [round(sum([p["stage1"], p["stage2"], p["stage3"]][: i + 1]) * 1450) for i in range(3)]
        steps = [bounds[0], bounds[1] - bounds[0], bounds[2] - bounds[1] + 40]
        assert row.value == sum(n * c for n, c in zip(steps, [21, 38, 55])) / 1000
        assert row.feasible == (row.metrics["val_loss"] <= 3.28)
    assert len({r.value for r in rows}) > 1


def test_parameter_golf_study_sets_env_vars(tmp_path, monkeypatch):
    # as the shipped studies run it: `train_gpt.py` by its name, in each trial's own directory (the injector copies
    # the script there; the checkout is elsewhere)
    checkout = tmp_path / "parameter-golf"
    checkout.mkdir()
    script = checkout / "train_gpt.py"
    script.write_bytes((HELPERS / "stand_in_parameter_golf.py").read_bytes())
    spec = {
        "trainer": {"command": ["{python}", "train_gpt.py"], "log_format": "parameter-golf",
                    "inject": {"name": "parameter-golf", "options": {"script": str(script)},
                               "map": {"matrix_lr": "MATRIX_LR", "scalar_lr": "SCALAR_LR", "tied_embed_lr": "TIED_EMBED_LR"}}},
        "parameters": {name: {"type": "float", "low": 0.005, "high": 0.1, "log": True}
                       for name in ("matrix_lr", "scalar_lr", "tied_embed_lr")},
        "objective": {"minimize": "val_bpb"},
        "sampler": {"name": "tpe", "seed": 0}, "budget": {"max_trials": 4, "parallel": 2},
    }
    rows = _run(tmp_path, monkeypatch, spec)
    assert [r.state for r in rows] == ["complete"] * 4
    for row in rows:
        p = row.params
        expected = 1.22 + 2.0 * (math.log(p["matrix_lr"] / 0.02) ** 2 + math.log(p["scalar_lr"] / 0.02) ** 2
                                 + math.log(p["tied_embed_lr"] / 0.03) ** 2) / 100
        assert abs(row.value - expected) < 1e-7  # the official (post-quantization) score, from the env it got
        assert "MATRIX_LR" in row.injection_diff
        assert (Path(row.workdir) / "train_gpt.py").read_bytes() == script.read_bytes()


def test_a_mapped_name_the_script_never_reads_is_refused_before_running(tmp_path, monkeypatch):
    spec = {
        "trainer": {"command": ["{python}", str(HELPERS / "stand_in_parameter_golf.py")], "log_format": "parameter-golf",
                    "inject": {"name": "parameter-golf", "options": {"script": str(HELPERS / "stand_in_parameter_golf.py")},
                               "map": {"lr": "MATRX_LR"}}},
        "parameters": {"lr": {"type": "float", "low": 0.01, "high": 0.1}},
        "objective": {"minimize": "val_bpb"}, "budget": {"max_trials": 1}, "sampler": {"name": "random"},
    }
    monkeypatch.setattr("orchestrator.run.controller.MAX_INVALID_IN_A_ROW", 3)
    with pytest.raises(OrchError, match="3 sampled points in a row could not make a valid job .*never reads"):
        _run(tmp_path, monkeypatch, spec)
    rows = assert_agrees_with_optuna(Database(f"sqlite:///{tmp_path / 'orch.db'}"), "s")
    assert rows and all(r.state == "invalid" and "never reads $MATRX_LR" in r.note and r.pid is None for r in rows)


def test_shipped_studies_validate():
    for path in sorted((REPO / "studies").glob("*.yaml")):
        result = orch("study", "validate", str(path))
        assert result.returncode == 0, (path.name, result.stderr)


def test_nanochat_study_passes_its_flags(tmp_path, monkeypatch):
    script = str(HELPERS / "stand_in_nanochat.py")
    spec = {
        "trainer": {"command": ["{python}", script], "log_format": "nanochat",
                    "inject": {"name": "nanochat", "options": {"script": script},
                               "map": {"depth": "depth", "data_ratio": "target_param_data_ratio"}}},
        "parameters": {"depth": {"type": "int", "low": 16, "high": 26, "step": 2},
                       "data_ratio": {"type": "float", "low": 8.0, "high": 12.0, "step": 0.5}},
        "objective": {"maximize": "core_metric"},
        "sampler": {"name": "grid", "seed": 0}, "budget": {"max_trials": 3, "parallel": 2},
    }
    rows = _run(tmp_path, monkeypatch, spec)
    assert [r.state for r in rows] == ["complete"] * 3
    for row in rows:
        depth, ratio = row.params["depth"], row.params["data_ratio"]
        assert row.command[-2:] == [f"--depth={depth}", f"--target-param-data-ratio={ratio!r}"]
        assert row.value == round(0.20 + 0.004 * depth - 0.002 * (ratio - 10.0) ** 2, 4)
