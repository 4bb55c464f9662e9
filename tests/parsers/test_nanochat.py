"""nanochat adapter. No real nanochat log is in the fixtures: the sample below is written from the print formats
in karpathy/nanochat's scripts/base_train.py and nanochat/common.py (print0 f-strings and the logging format
'%(asctime)s - %(name)s - %(levelname)s - %(message)s' with ANSI colours), for a 20-step run."""

from __future__ import annotations

import pytest

from orchestrator.parsers import detect_format
from orchestrator.parsers.files import parse_log_file, parsed_run_to_json
from orchestrator.parsers.nanochat import NanochatAdapter

G, B, R = "\x1b[32m", "\x1b[1m", "\x1b[0m"


def _train(step: int, total: int, loss: float, dt: float, tok: int, mfu: float, total_min: float, *, new=True) -> str:
    pct = 100 * step / total
    if new:
        eta = f" | eta: {(total - step) * dt / 60000:.1f}m" if step > 10 else ""
        return (f"step {step:05d}/{total:05d} ({pct:.2f}%) | loss: {loss:.6f} | lrm: 1.00 | dt: {dt:.2f}ms | "
                f"tok/sec: {tok:,} | bf16_mfu: {mfu:.2f} | epoch: 1 pq: 0 rg: {step} | total time: {total_min:.2f}m{eta}")
    return (f"step {step:05d}/{total:05d} ({pct:.2f}%) | loss: {loss:.6f} | grad norm: 0.4123 | lrm: 1.00 | "
            f"dt: {dt:.2f}ms | tok/sec: {tok:,} | mfu: {mfu:.2f} | total time: {total_min:.2f}m")


def sample_log(total: int = 20, new: bool = True, finished: bool = True) -> str:
    lines = [
        "",
        "     ████████    ██████   ████████    ██████   ██████  ░███████    ██████  ███████",
        f"2026-07-04 10:00:01,123 - nanochat.common - {G}{B}INFO{R} - Distributed world size: {B}8{R}",
        "GPU: NVIDIA H100 80GB HBM3 | Peak FLOPS (BF16): 9.89e+14",
        "COMPUTE_DTYPE: torch.bfloat16 (cuda with bf16 support)",
        "Vocab size: 32,768",
        "Parameter counts:",
        "total                   : 1,384,124,416",
        "Estimated FLOPs per token: 7.893154e+09",
        f"Using user-provided number of iterations: {total:,}",
        f"Total number of training tokens: {total * 524288:,}",
        "Tokens / micro-batch / rank: 16 x 2048 = 32,768",
        "Total batch size 524,288 => gradient accumulation steps: 2",
        "Step 00000 | Validation bpb: 3.218765",
    ]
    elapsed = 0.0
    for step in range(total):
        dt = 1480.25 if step else 61234.5
        if step > 10:
            elapsed += dt / 60000
        lines.append(_train(step, total, 10.5 - 0.3 * step, dt, 354_187, 48.31, elapsed, new=new))
        if step == 10:
            lines.append("Step 00010 | Validation bpb: 1.402311")
    if finished:
        lines += [
            f"Step {total:05d} | Validation bpb: 0.912345",
            f"Step {total:05d} | CORE metric: 0.2612",
            f"Peak memory usage: 75042.13MiB",
            f"Total training time: {elapsed:.2f}m",
            "Minimum validation bpb: 0.912345",
        ]
    return "\n".join(lines) + "\n"


def test_detected_and_parsed(tmp_path):
    path = tmp_path / "base_train.log"
    path.write_text(sample_log())
    assert detect_format(path.read_text()[:65536]).name == "nanochat"
    run = parse_log_file(path)
    assert run.format == "nanochat" and run.complete and run.exit_reason == "completed"
    assert (run.final_step, run.total_steps) == (20, 20)
    assert run.metrics["core_metric"] == pytest.approx(0.2612)
    assert run.metrics["val_bpb"] == pytest.approx(0.912345)
    assert run.metrics["peak_memory_mib"] == pytest.approx(75042.13)
    assert run.metrics["train_time_ms"] == pytest.approx(0.22 * 60000)  # "Total training time: 0.22m"
    assert run.metrics["step_avg_ms"] == pytest.approx(1480.25)  # mean dt after the first 10 steps
    assert run.gpu_name == "NVIDIA H100 80GB HBM3" and run.gpu_count == 8
    train = [p for p in run.points if p.kind == "train"]
    assert len(train) == 20 and train[0].train_loss == pytest.approx(10.5) and train[5].extra["mfu"] == 48.31
    assert train[5].extra["tok_per_sec"] == 354187
    assert [p.extra["val_bpb"] for p in run.points if p.kind == "val"] == [3.218765, 1.402311, 0.912345]
    data = parsed_run_to_json(run, path)
    assert data["official_metric"] == "core_metric" and data["official_value"] == pytest.approx(0.2612)


def test_older_print_format_with_grad_norm_and_mfu():
    run = NanochatAdapter().parse_lines(sample_log(new=False).splitlines(keepends=True))
    train = [p for p in run.points if p.kind == "train"]
    assert train[3].extra["grad_norm"] == 0.4123 and train[3].extra["mfu"] == 48.31
    assert run.complete


def test_unfinished_run_is_incomplete():
    run = NanochatAdapter().parse_lines(sample_log(finished=False).splitlines(keepends=True))
    assert not run.complete and "19/20" in run.reason and run.final_step == 19


def test_base_eval_core_line_and_wandb_summary():
    stream = NanochatAdapter().stream()
    for line in sample_log(finished=False).splitlines() + [
        "CORE metric: 0.2585",
        "wandb:          core_metric 0.25851",
        "wandb:  total_training_time 10949.46713",
    ]:
        stream.feed(line)
    run = stream.finish()
    assert run.complete and run.metrics["core_metric"] == pytest.approx(0.2585)
    assert run.metrics["train_time_s"] == pytest.approx(10949.46713)
