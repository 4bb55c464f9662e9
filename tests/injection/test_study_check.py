"""Validate-time checks (orchestrator/study/code_check.py, Injector.check): what a study's first trial would
hit is an error of `orch study validate` / `create`, not a stream of invalid trials."""

from __future__ import annotations

import base64
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.config.errors import ConfigError, ConfigErrors
from orchestrator.injection import InjectionError, get_injector
from orchestrator.injection._script_scan import env_var_names, env_var_types, is_packed
from orchestrator.study.code_check import validate_study_file

GOLF = '''import os
class Hyperparameters:
    iterations = int(os.environ.get("ITERATIONS", 20000))
    matrix_lr = float(os.environ.get("MATRIX_LR", 0.04))
    run_id = os.environ.get("RUN_ID", "x")
'''

MODDED = '''TRAIN_MAX_NUM_DOCS = 8
class Hyperparameters:
    num_iterations: int = 1750
'''


def packed(source: str) -> str:
    """A script shipped as parameter-golf records ship theirs (e.g. 2026-04-04_SP4096..., train_gpt.py)."""
    blob = base64.b85encode(lzma.compress(source.encode())).decode()
    return f'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("{blob}")))\n'


def test_packed_script_is_read_before_names_are_checked(tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text(packed(GOLF))
    assert is_packed(script)
    assert env_var_names(script) == {"ITERATIONS", "MATRIX_LR", "RUN_ID"}
    assert env_var_types(script) == {"ITERATIONS": "int", "MATRIX_LR": "float"}
    env = get_injector("parameter-golf").prepare({"matrix_lr": 0.02}, tmp_path, {"script": str(script)}).env
    assert env == {"MATRIX_LR": "0.02"}


def test_int_variable_gets_a_whole_number(tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text(GOLF)
    injector = get_injector("parameter-golf")
    assert injector.prepare({"iterations": 1200.0}, tmp_path, {"script": str(script)}).env == {"ITERATIONS": "1200"}
    with pytest.raises(InjectionError, match=r"reads \$ITERATIONS with int\(\)"):
        injector.prepare({"iterations": 1200.5}, tmp_path, {"script": str(script)})
    assert injector.check([{"iterations": 1000.0}, {"iterations": 1500.5}], {"script": str(script)}) == [
        "parameter 'iterations': the script reads $ITERATIONS with int(), so 1500.5 would crash it; make the "
        "parameter type: int (or give it whole-number values)"]
    assert "does not exist" in injector.check([{}], {"script": str(tmp_path / "nope.py")})[0]


def _study(tmp_path: Path, trainer: dict, parameters: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "trainer": {"log_format": "parameter-golf", "code_dir": ".", **trainer}, "parameters": parameters,
        "objective": {"minimize": "val_bpb"}, "budget": {"max_trials": 2}, "sampler": {"name": "random"}}))
    return path


def test_validate_refuses_a_missing_script_and_a_patch_that_cannot_apply(tmp_path):
    (tmp_path / "train_gpt.py").write_text(MODDED)
    path = _study(tmp_path, {"command": ["{python}", "trian_gpt.py"],
                             "inject": {"name": "modded-nanogpt", "options": {"script": "train_gpt.py"},
                                        "map": {"iters": "Hyperparameters.num_iteration"}}},
                  {"iters": {"type": "int", "low": 1000, "high": 2000}})
    with pytest.raises(ConfigErrors) as err:
        validate_study_file(path)
    text = str(err.value)
    assert "trainer.command[1]: the training script 'trian_gpt.py' is not in code_dir" in text
    assert "trainer.inject: injection (modded-nanogpt) at the ends of the ranges" in text
    assert "Hyperparameters.num_iterations" in text  # the injector's did-you-mean


def test_validate_refuses_an_env_value_of_the_wrong_type(tmp_path):
    (tmp_path / "train_gpt.py").write_text(packed(GOLF))
    path = _study(tmp_path, {"command": ["{python}", "train_gpt.py"]},
                  {"iters": {"type": "float", "low": 1000, "high": 2000, "env": "ITERATIONS", "format": ".1f"}})
    with pytest.raises(ConfigError, match=r"parameters\.iters\.env: train_gpt.py reads \$ITERATIONS with int\(\).*'1000.0'"):
        validate_study_file(path)
    path = _study(tmp_path, {"command": ["{python}", "train_gpt.py"]},
                  {"iters": {"type": "int", "low": 1000, "high": 2000, "env": "ITERATIONS"}})
    spec, _ = validate_study_file(path)
    assert spec.parameters["iters"].env == "ITERATIONS"


def test_absent_code_dir_is_a_warning(tmp_path, capsys):
    path = _study(tmp_path, {"command": ["{python}", "train_gpt.py"], "code_dir": "../no-checkout"},
                  {"lr": {"type": "float", "low": 0.01, "high": 0.1, "env": "MATRIX_LR"}})
    validate_study_file(path)
    assert "is not on this machine" in capsys.readouterr().err


def test_orch_study_validate_runs_the_checks(tmp_path):
    (tmp_path / "train_gpt.py").write_text(GOLF)
    path = _study(tmp_path, {"command": ["{python}", "train_gpt.py"],
                             "inject": {"name": "parameter-golf", "options": {"script": "train_gpt.py"},
                                        "map": {"lr": "MATRX_LR"}}},
                  {"lr": {"type": "float", "low": 0.01, "high": 0.1}})
    result = subprocess.run([sys.executable, "-m", "orchestrator", "study", "validate", str(path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0 and "never reads $MATRX_LR" in result.stderr and "MATRIX_LR" in result.stderr
