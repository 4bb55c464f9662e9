"""parameter-golf (environment variables) and nanochat (--key=value flags) injectors."""

from __future__ import annotations

import pytest

from orchestrator.injection import INJECTORS, InjectionError, get_injector

PG_SCRIPT = '''
import os
class Hyperparameters:
    iterations = int(os.environ.get("ITERATIONS", 20000))
    matrix_lr = float(os.environ.get("MATRIX_LR", 0.04))
    tie_embeddings = bool(int(os.environ.get("TIE_EMBEDDINGS", "1")))
    run_id = os.environ.get("RUN_ID", "x")
    seed = int(os.getenv("SEED", 1337))
'''

NANOCHAT_SCRIPT = '''
import argparse
parser = argparse.ArgumentParser(description="Pretrain base model")
parser.add_argument("--depth", type=int, default=20, help="depth of the Transformer model")
parser.add_argument("--fp8", action="store_true", help="enable FP8 training")
parser.add_argument("--fp8-recipe", type=str, default="tensorwise", choices=["rowwise", "tensorwise"])
parser.add_argument("--target-param-data-ratio", type=float, default=12)
parser.add_argument("--run", type=str, default="dummy")
args = parser.parse_args()
'''


def test_registry():
    assert set(INJECTORS) == {"modded-nanogpt", "parameter-golf", "nanochat"}
    with pytest.raises(InjectionError, match="unknown injector"):
        get_injector("nope")


def test_parameter_golf_env(tmp_path):
    checkout, trial = tmp_path / "parameter-golf", tmp_path / "trial-0003"
    checkout.mkdir()
    script = checkout / "train_gpt.py"
    script.write_text("from golf_utils import helper\n" + PG_SCRIPT)
    (checkout / "golf_utils.py").write_text("helper = 1\n")
    (checkout / "unrelated.py").write_text("x = 1\n")
    injection = get_injector("parameter-golf").prepare(
        {"matrix_lr": 0.025, "ITERATIONS": 9000, "tie_embeddings": False, "run_id": "trial-3", "seed": 42},
        trial, {"script": script},
    )
    assert injection.env == {"MATRIX_LR": "0.025", "ITERATIONS": "9000", "TIE_EMBEDDINGS": "0", "RUN_ID": "trial-3",
                             "SEED": "42"}
    assert injection.argv == []
    # the job runs in the trial directory: the script (unchanged) and the module it imports from its folder are there
    assert sorted(f.name for f in injection.files) == ["golf_utils.py", "train_gpt.py"]
    assert (trial / "train_gpt.py").read_bytes() == script.read_bytes()
    assert not (trial / "unrelated.py").exists()
    assert "+MATRIX_LR=0.025" in injection.diff


def test_parameter_golf_edits_apply_to_the_copied_script(tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text(PG_SCRIPT)
    trial = tmp_path / "trial"
    injection = get_injector("parameter-golf").prepare(
        {"matrix_lr": 0.04}, trial, {"script": str(script), "edits": [{"find": "import os\n", "replace": "import os, sys\n"}]})
    assert (trial / "train_gpt.py").read_text() == PG_SCRIPT.replace("import os\n", "import os, sys\n")
    assert script.read_text() == PG_SCRIPT and "+import os, sys" in injection.diff
    with pytest.raises(InjectionError, match="edits need options.script"):
        get_injector("parameter-golf").prepare({"matrix_lr": 0.04}, trial, {"edits": [{"find": "a", "replace": "b"}]})


@pytest.mark.parametrize(
    "params,message",
    [
        ({"matrix_lrr": 0.1}, "never reads \\$MATRIX_LRR; did you mean MATRIX_LR"),
        ({"MATRIX_LR": float("inf")}, "finite"),
        ({"RUN_ID": "a\nb"}, "newlines"),
        ({"bad-name": 1}, "letters, digits and underscores"),
        ({"MATRIX_LR": [1, 2]}, "unsupported value"),
    ],
)
def test_parameter_golf_refuses(tmp_path, params, message):
    script = tmp_path / "train_gpt.py"
    script.write_text(PG_SCRIPT)
    with pytest.raises(InjectionError, match=message):
        get_injector("parameter-golf").prepare(params, tmp_path, {"script": script})


def test_parameter_golf_without_script_accepts_any_valid_name(tmp_path):
    injection = get_injector("parameter-golf").prepare({"warmdown_frac": 0.75}, tmp_path)
    assert injection.env == {"WARMDOWN_FRAC": "0.75"}


def test_nanochat_flags(tmp_path):
    script = tmp_path / "base_train.py"
    script.write_text(NANOCHAT_SCRIPT)
    injection = get_injector("nanochat").prepare(
        {"depth": 26, "fp8": True, "target_param_data_ratio": 8.25, "run": "d26 $(rm -rf ~)"},
        tmp_path, {"script": script},
    )
    # one argv element per flag; a value with shell syntax stays a literal string (no shell involved)
    assert injection.argv == ["--depth=26", "--fp8", "--target-param-data-ratio=8.25", "--run=d26 $(rm -rf ~)"]
    assert injection.env == {} and "+--depth=26" in injection.diff
    assert get_injector("nanochat").prepare({"fp8": False}, tmp_path, {"script": script}).argv == []


@pytest.mark.parametrize(
    "params,message",
    [
        ({"dept": 26}, "no --dept option; did you mean --depth"),
        ({"depth": 26.5}, "takes an int"),
        ({"depth": 26.0}, "give 26"),
        ({"fp8": 1}, "is a switch"),
        ({"fp8_recipe": "columnwise"}, "must be one of"),
        ({"target_param_data_ratio": "lots"}, "takes a number"),
    ],
)
def test_nanochat_refuses(tmp_path, params, message):
    script = tmp_path / "base_train.py"
    script.write_text(NANOCHAT_SCRIPT)
    with pytest.raises(InjectionError, match=message):
        get_injector("nanochat").prepare(params, tmp_path, {"script": script})
