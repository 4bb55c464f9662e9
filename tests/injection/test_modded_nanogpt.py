"""Patching the REAL modded-nanogpt train_gpt.py: the fixture logs begin with the full source of the script
that produced them, so the script is extracted from a log at test time (no copy lives in this repository)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from orchestrator.injection import InjectionError, get_injector
from orchestrator.injection.modded_nanogpt import const_eval

from tests.helpers.shared_logs import log


def script_from_log(log_path: Path) -> str:
    """The train_gpt.py source at the top of a modded-nanogpt log: every line up to the first separator line
    ("=" * 100, or the "-" * 40 line that starts the next concatenated file in 2026 logs)."""
    lines = []
    with log_path.open(encoding="utf-8") as f:
        for line in f:
            body = line.rstrip("\n")
            if len(body) >= 40 and set(body) in ({"="}, {"-"}):
                if lines:
                    break
                continue  # a log may open with a separator
            lines.append(line)
    return "".join(lines)


@pytest.fixture
def real_script(tmp_path) -> Path:
    source = script_from_log(log("modded-nanogpt", "06_"))
    ast.parse(source)  # the extracted script is valid Python
    path = tmp_path / "train_gpt.py"
    path.write_text(source)
    return path


def stages_of(source: str) -> list[dict]:
    tree = ast.parse(source)
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", None) == "TRAINING_STAGES":
            return [{k.arg: const_eval(k.value) for k in call.keywords} for call in stmt.value.elts]
    raise AssertionError("no TRAINING_STAGES")


def test_patch_real_script_durations(real_script, tmp_path):
    original = real_script.read_text()
    assert [s.get("duration") for s in stages_of(original)] == [1 / 3, 1 / 3, 1 / 3, None]
    injection = get_injector("modded-nanogpt").prepare(
        {"stage_durations": [0.30, 0.35, 0.35], "Hyperparameters.num_scheduled_iterations": 1400},
        tmp_path / "trial-7", {"script": str(real_script)},
    )
    (patched_path,) = injection.files
    assert patched_path == (tmp_path / "trial-7" / "train_gpt.py").resolve()
    patched = patched_path.read_text()
    stages = stages_of(patched)  # parse the result again with ast
    assert [s.get("duration") for s in stages] == [0.30, 0.35, 0.35, None]
    assert [s["batch_size"] for s in stages] == [8 * 2048 * 8, 16 * 2048 * 8, 24 * 2048 * 8, 24 * 2048 * 8]
    tree = ast.parse(patched)
    hyper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Hyperparameters")
    value = next(s.value for s in hyper.body if isinstance(s, ast.AnnAssign) and s.target.id == "num_scheduled_iterations")
    assert const_eval(value) == 1400
    # formatting and comments survive; only the values changed
    assert "lr_mul=1.52,  # (16/8)**0.6" in patched
    assert "num_scheduled_iterations: int = 1400  # number of steps to complete lr and ws schedule" in patched
    assert len(patched.splitlines()) == len(original.splitlines())
    changed = [line for line in injection.diff.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert len(changed) == 8  # 4 lines, each once removed and once added
    assert "-    TrainingStage(duration=1/3, train_max_seq_len=896," in injection.diff
    assert "+    TrainingStage(duration=0.3, train_max_seq_len=896," in injection.diff
    assert injection.argv == [] and injection.env == {}
    assert real_script.read_text() == original  # the source script itself is untouched


def test_single_stage_field_and_batch_size(real_script, tmp_path):
    injection = get_injector("modded-nanogpt").prepare(
        {"stages[1].batch_size": 24 * 2048 * 8, "stages.0.window_sizes": (1, 5), "stages[2].lr_mul": 1.6},
        tmp_path, {"script": real_script},
    )
    stages = stages_of(injection.files[0].read_text())
    assert stages[1]["batch_size"] == 393216 and stages[0]["window_sizes"] == (1, 5) and stages[2]["lr_mul"] == 1.6


@pytest.mark.parametrize(
    "params,message",
    [
        ({"stages[0].duration": 0.5}, "sum to 1"),
        ({"stage_durations": [-0.2, 0.6, 0.6]}, "negative"),
        ({"stage_durations": [0.5, 0.5]}, "list of 3 numbers"),
        ({"stages[3].duration": 0.1}, "no duration= keyword"),
        ({"stages[7].lr_mul": 1.0}, "has 4 stages"),
        ({"stages[1].batch_size": 12345 * 8}, "TRAIN_MAX_NUM_DOCS"),
        ({"stages[1].batch_size": 131073}, "multiple of 8"),
        ({"Hyperparameters.num_scheduled_iterations": 1400.5}, "type int"),
        ({"TRAIN_MAX_NUM_DOC": {1: 2}}, "did you mean TRAIN_MAX_NUM_DOCS"),
        ({"stages[0].lr_mul": float("nan")}, "finite"),
        ({"Hyperparameters.run_id": "x\n; rm -rf /"}, "newlines"),
    ],
)
def test_bad_values_are_refused(real_script, tmp_path, params, message):
    with pytest.raises(InjectionError, match=message):
        get_injector("modded-nanogpt").prepare(params, tmp_path / "w", {"script": real_script})
    assert not (tmp_path / "w" / "train_gpt.py").exists()


def test_batch_size_allowed_when_cap_table_is_extended(real_script, tmp_path):
    injection = get_injector("modded-nanogpt").prepare(
        {"stages[0].batch_size": 4 * 2048 * 8, "TRAIN_MAX_NUM_DOCS": {8192: 48, 16384: 64, 32768: 96, 49152: 128}},
        tmp_path, {"script": real_script},
    )
    assert "TRAIN_MAX_NUM_DOCS = {8192: 48, 16384: 64, 32768: 96, 49152: 128}" in injection.files[0].read_text()


def test_script_without_training_stages_is_a_clear_error(tmp_path):
    old = tmp_path / "train_gpt.py"
    old.write_text(script_from_log(log("modded-nanogpt", "04_")))  # 2025-02: no TrainingStage list yet
    with pytest.raises(InjectionError, match="list .*TrainingStage"):
        get_injector("modded-nanogpt").prepare({"stages[0].duration": 0.5}, tmp_path / "w", {"script": old})


def test_needs_script_option(tmp_path):
    with pytest.raises(InjectionError, match="options.script"):
        get_injector("modded-nanogpt").prepare({"x": 1}, tmp_path, {})


def test_companion_modules_and_files_are_copied_beside_the_patched_script(real_script, tmp_path):
    """The current script imports modules from its own folder (`from triton_kernels import ...`) and reads their
    source: the trial directory gets them, and the `companions` option's files (a stand-in module), unchanged."""
    checkout = real_script.parent
    source = "from triton_kernels import XXT\nimport kernels\n" + real_script.read_text()
    real_script.write_text(source)
    (checkout / "triton_kernels.py").write_text("XXT = 1\n")
    (checkout / "not_imported.py").write_text("y = 2\n")
    standin = tmp_path / "study" / "kernels.py"
    standin.parent.mkdir()
    standin.write_text("def get_kernel(name):\n    return name\n")
    trial = tmp_path / "trial-1"
    injection = get_injector("modded-nanogpt").prepare(
        # a derived value arrives as a float: 60.0 is written as the int the script has there
        {"stage_durations": [0.30, 0.35, 0.35], "Hyperparameters.num_scheduled_iterations": 60.0},
        trial, {"script": str(real_script), "companions": [str(standin)]},
    )
    assert sorted(f.name for f in injection.files) == ["kernels.py", "train_gpt.py", "triton_kernels.py"]
    assert (trial / "triton_kernels.py").read_text() == "XXT = 1\n"
    assert (trial / "kernels.py").read_text() == standin.read_text()
    assert not (trial / "not_imported.py").exists()
    assert "num_scheduled_iterations: int = 60  #" in (trial / "train_gpt.py").read_text()
    with pytest.raises(InjectionError, match=r"options.companions: .*missing.py is not a file"):
        get_injector("modded-nanogpt").prepare({"stage_durations": [0.3, 0.35, 0.35]}, tmp_path / "trial-2",
                                               {"script": str(real_script), "companions": [str(tmp_path / "missing.py")]})
    with pytest.raises(InjectionError, match="type int"):  # a fraction is still refused where an int is
        get_injector("modded-nanogpt").prepare({"Hyperparameters.num_scheduled_iterations": 60.5}, tmp_path / "t3",
                                               {"script": str(real_script)})


def test_script_values_reads_what_the_patch_wrote(real_script, tmp_path):
    from orchestrator.injection.modded_nanogpt import script_values

    injection = get_injector("modded-nanogpt").prepare(
        {"stage_durations": [0.30, 0.35, 0.35], "Hyperparameters.num_scheduled_iterations": 1400},
        tmp_path / "trial-9", {"script": str(real_script)})
    values, stages = script_values(injection.files[0].read_text())
    assert values["Hyperparameters.num_scheduled_iterations"] == 1400
    assert stages == stages_of(injection.files[0].read_text())  # the same as the test's own reading
    assert [s.get("duration") for s in stages] == [0.30, 0.35, 0.35, None]


def test_edits_change_the_trial_copies_and_show_in_the_diff(real_script, tmp_path):
    """`edits`: exact replacements in the trial's copy of the script (after the value patch) or of a companion,
    each of whose find text must occur exactly once; the checkout is never changed and the diff shows every edit."""
    checkout = real_script.parent
    real_script.write_text("from triton_kernels import XXT\n" + real_script.read_text())
    (checkout / "triton_kernels.py").write_text("XXT = 1\nscale = buf[i:i+1]\n")
    before = real_script.read_text()
    options = {"script": str(real_script), "edits": [
        {"find": "import os\n", "replace": "import os  # edited\n"},
        {"file": "triton_kernels.py", "find": "buf[i:i+1]", "replace": "aligned[i, :1]"}]}
    trial = tmp_path / "trial-1"
    injection = get_injector("modded-nanogpt").prepare({"stage_durations": [0.30, 0.35, 0.35]}, trial, options)
    patched = (trial / "train_gpt.py").read_text()
    assert "import os  # edited\n" in patched and "duration=0.3," in patched
    assert (trial / "triton_kernels.py").read_text() == "XXT = 1\nscale = aligned[i, :1]\n"
    assert real_script.read_text() == before and "buf[i:i+1]" in (checkout / "triton_kernels.py").read_text()
    assert "+import os  # edited" in injection.diff and "+scale = aligned[i, :1]" in injection.diff
    assert "+++ b/triton_kernels.py" in injection.diff

    def refused(edits, match):
        with pytest.raises(InjectionError, match=match):
            get_injector("modded-nanogpt").prepare({"stage_durations": [0.3, 0.35, 0.35]}, tmp_path / "t2",
                                                   {"script": str(real_script), "edits": edits})

    refused([{"find": "no such text anywhere", "replace": "x"}], r"options.edits\[0\].find: .* occurs 0 times in train_gpt.py")
    refused([{"find": "import os\n", "replace": "a"}, {"find": "torch", "replace": "b"}],
            r"options.edits\[1\].find: 'torch' occurs \d+ times")
    refused([{"file": "other.py", "find": "x", "replace": "y"}], r"options.edits\[0\].file: 'other.py' is not among")
    refused([{"find": "import os\n"}], r"options.edits\[0\].replace: give the replacement text")
    refused({"find": "x"}, r"options.edits: give a list")
