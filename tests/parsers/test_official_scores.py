"""parameter-golf's official score, the track-3 early stop and source headers, against real record logs.

The record logs are tails of the logs at openai/parameter-golf's HEAD (commit in records/manifest.json, written
by records/make_parameter_golf_records.py; README there), each beside the per-seed val_bpb its submission.json
reports. The track-3 log is from KellerJordan/modded-nanogpt (records/README.md).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from orchestrator.parsers import get_adapter
from orchestrator.parsers.files import parse_log_file
from orchestrator.parsers.parameter_golf import ParameterGolfAdapter, ScoredLine, choose_score

RECORDS = Path(__file__).parent / "records"
MANIFEST = json.loads((RECORDS / "manifest.json").read_text(encoding="utf-8"))


def _printed_equal(expected: str, got: float | None) -> bool:
    """`got` equals submission.json's number to the digits it prints."""
    if got is None:
        return False
    decimals = len(expected.split(".", 1)[1]) if "." in expected else 0
    return abs(round(got, decimals) - float(expected)) < 0.5 * 10 ** -decimals + 1e-12


@pytest.mark.parametrize("entry", MANIFEST["entries"], ids=lambda e: f"{e['record'].rsplit('/', 1)[-1][:40]}-{e['key'][:8]}-{e['seed']}")
def test_score_equals_submission_json(entry):
    run = parse_log_file(RECORDS / "parameter_golf" / entry["fixture"], format="parameter-golf")
    assert run.complete, run.reason
    assert _printed_equal(entry["expected_val_bpb"], run.official_value), (
        f"{entry['log']}: {run.official_label}={run.official_value}, submission.json {entry['expected_val_bpb']}; "
        f"{run.notes.get('scored_lines')}")


def test_fixture_covers_every_per_seed_record():
    assert len(MANIFEST["entries"]) == 79 and not MANIFEST["skipped"]
    assert len({e["record"] for e in MANIFEST["entries"]}) == 25


def test_ttt_diagnostic_after_the_score_is_not_the_score():
    # 2026-04-04_SP4096...: "No TTT"; the log ends with a TTT run that scores 1.336
    name = "2026-04-04_SP4096_DepthRecurrence_ParallelResid_MuonEqR__train_seed42.log.gz"
    run = parse_log_file(RECORDS / "parameter_golf" / name)
    assert run.official_label == "final_int6_sliding_window" and run.official_value == pytest.approx(1.08938974)
    assert "final_int6_ttt=1.336032" in run.notes["scored_lines"]


def _tail_lines(name: str) -> list[str]:
    return gzip.decompress((RECORDS / "parameter_golf" / name).read_bytes()).decode().splitlines(keepends=True)


NAIVE_SEED = "2026-03-19_SlidingWindow_FP16Emb_10L_MuonWD_OvertoneInit__train_seed42.log.gz"  # roundtrip 1.17423973


def test_a_delta_line_last_is_not_the_score():
    lines = _tail_lines(NAIVE_SEED) + ["roundtrip_delta val_loss:0.00831 val_bpb:0.00495\n"]
    run = ParameterGolfAdapter().parse_lines(lines)
    assert run.official_label == "final_int8_zlib_roundtrip_exact" and run.official_value == pytest.approx(1.17423973)


def test_score_label_names_the_scripts_own_line():
    lines = _tail_lines(NAIVE_SEED) + ["my_eval val_loss:1.9 val_bpb:1.2001\n"]
    assert ParameterGolfAdapter().parse_lines(lines).official_value == pytest.approx(1.17423973)
    adapter = get_adapter("parameter-golf", {"score_label": "my_eval"})
    run = adapter.parse_lines(lines)
    assert run.official_label == "my_eval" and run.official_value == pytest.approx(1.2001)
    # LABEL finds LABEL_exact first
    run = get_adapter("parameter-golf", {"score_label": "final_int8_zlib_roundtrip"}).parse_lines(lines)
    assert run.official_label == "final_int8_zlib_roundtrip_exact"
    # a label the log never prints: incomplete, and says so
    run = get_adapter("parameter-golf", {"score_label": "nope"}).parse_lines(lines)
    assert not run.complete and "'nope'" in run.reason
    assert get_adapter("parameter-golf") is get_adapter("parameter-golf", {})  # no options: the shared instance


def test_unknown_log_option_is_refused():
    with pytest.raises(ValueError, match="takes no option 'score_lable'.*score_label"):
        get_adapter("parameter-golf", {"score_lable": "x"})
    with pytest.raises(ValueError, match="takes no option"):
        get_adapter("modded-nanogpt", {"score_label": "x"})
    with pytest.raises(ValueError, match="score_label must be"):
        get_adapter("parameter-golf", {"score_label": 3})


def test_choose_score_rules():
    s = lambda label, bpb, dec=8, order=0: ScoredLine(label, 2.0, bpb, dec, order)  # noqa: E731
    lines = [s("diagnostic quantized", 1.05), s("pre-quantization post-ema", 1.04, order=1),
             s("quantized", 1.10, order=2), s("quantized_sliding_window", 1.084, order=3),
             s("ttt_sliding:done", 1.0821, 4, order=4), s("legal_ttt_exact", 1.08209788, order=5),
             s("roundtrip_delta", 0.005, order=6)]
    best, how = choose_score(lines)
    assert best.label == "legal_ttt_exact" and "3 evaluations" in how
    assert choose_score([s("roundtrip_delta", 0.005)])[0] is None
    # `_exact` beside its rounded twin: the exact one, even when rounding made the twin lower
    best, _ = choose_score([s("final_int6_sliding_window", 1.0974, 4), s("final_int6_sliding_window_exact", 1.0974384)])
    assert best.label.endswith("_exact")


# ----------------------------------------------------------------------------------------------------------
# modded-nanogpt track 3: a submission that stops the loop at its chosen step


def test_track3_stop_at_the_submitted_step_is_an_outcome():
    # results/20260520_rre_extrapolation_pr300_2925/README.md: "The submitted step count is 2925", seed 0 3.27793
    run = parse_log_file(RECORDS / "modded_nanogpt" / "track3_rre_2925_seed0_1786243c.txt.gz")
    assert run.complete and run.reason is None and run.exit_reason == "early_exit"
    assert (run.final_step, run.total_steps) == (2925, 3020)
    assert run.official_value == pytest.approx(3.27793) and run.metrics["train_time_s"] == pytest.approx(4488.664)
    assert "2925" in run.notes["early_exit"]


def test_track1_log_cut_after_an_eval_stays_incomplete():
    run = get_adapter("modded-nanogpt").parse_lines(
        ["step:0/1750 val_loss:10.83 train_time:0ms step_avg:nanms\n",
         "step:1500/1750 val_loss:3.30 train_time:150000ms step_avg:100.00ms\n"])
    assert not run.complete and run.exit_reason == "early_exit" and "1500/1750" in run.reason


# ----------------------------------------------------------------------------------------------------------
# logs whose source header is not `code` + "=" * 100
#
# No log at either repository's HEAD starts with these header forms (searched: `# cmd:`, `===== source: ... =====`);
# each case puts the header on a real record log (the tail above, a scored line 1.17423973).

SCRIPT = ['import os\n', 'import torch\n', '\n', 'def main():\n',
          '    print(f"step:{step}/{n} val_loss:{loss:.4f} val_bpb:{bpb:.4f}")\n', '"""a docstring that quotes a log\n',
          'step:1/2 val_loss:9.0 val_bpb:9.0 train_time:1ms step_avg:1ms\n', '"""\n', 'main()\n']


@pytest.mark.parametrize("header", [
    ["# cmd: torchrun --standalone --nproc_per_node=8 train_gpt.py\n", "# host: h100-node-3\n"],
    ["===== source: train_gpt.py =====\n", *SCRIPT],
    ["===== source: train_gpt.py =====\n", *SCRIPT, "===== source: utils.py =====\n", "import math\n",
     "=" * 100 + "\n"],
    SCRIPT,  # the script's source with no separator after it
    ["# cmd: python train_gpt.py\n", *SCRIPT],
], ids=["cmd-header", "titled-separator", "two-files-then-separator", "no-separator", "cmd-then-source"])
def test_source_header_forms_are_read(header):
    run = ParameterGolfAdapter().parse_lines(header + _tail_lines(NAIVE_SEED))
    assert run.complete, run.reason
    assert run.official_value == pytest.approx(1.17423973) and run.final_step == 10695
    assert all(p.val_loss != 9.0 for p in run.points)  # the docstring's example line is source, not log


def test_source_only_is_still_reported_as_such():
    run = ParameterGolfAdapter().parse_lines(SCRIPT)
    assert not run.complete and "script source" in run.reason
    run = get_adapter("modded-nanogpt").parse_lines(["# cmd: torchrun x.py\n", "import os\n", "x = 1\n"])
    assert not run.complete and "script source" in run.reason
