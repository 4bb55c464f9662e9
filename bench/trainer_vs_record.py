"""Our trainer against the current modded-nanogpt record, from the trial logs of one GPU session (bench/gpu_session.sh):
tokens/s, step time and MFU at the same 393,216 tokens a step and 2048-token sequences.

Both logs print `step:N/T ... train_time:Xms` after every step (cumulative timed training), so a step's time is
the difference of two consecutive lines. Ours: every step of the duty-cycle trials (one stage, 393,216 tokens a
step, micro-batches of 64Ki), steps after the first 5. The record's script at world size 1: the steps of its third
stage and extension (24 x 2048 x 8 = 393,216 tokens a step, 8 micro-batches of 48Ki), read from the patched
train_gpt.py beside its log (the stage durations and step counts orch wrote), or, where the trial directory was not
kept, from the source at the head of the script's own log (logs/*.txt), two steps after the stage starts.

MFU two ways: model FLOPs over the card's measured bf16 peak (the project's count: 772 TFLOP/s on the H200,
docs/trainer.md; 798 on the H100, `--measured-peak`) and over the datasheet's 989 TFLOP/s. Model FLOPs per token = 3 x forward: every matmul (2 FLOPs a weight) plus
attention over the keys each query sees (causal, the sliding window; documents not subtracted). Ours from
trainer.model.train_flops_per_token; the record's from its shape (11 layers of 768, MLP 3072, attention in 10
layers: 8 at the short window, 2 at the long one, vocabulary 50304) at its third stage's windows.

    python bench/trainer_vs_record.py --ours 'runs/duty-gpu/machine/warm/trial-*/train.log' \
        --record 'runs/mng-h200/trial-*' --out docs/device-runs/2026-12-06-trainer-vs-record.json
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import statistics
import sys
from itertools import accumulate
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.injection.modded_nanogpt import script_values  # noqa: E402
from orchestrator.parsers._common import SEPARATOR  # noqa: E402  (the log's "=" * 100 line after the source)

STEP = re.compile(r"^step:(\d+)/(\d+) .*?train_time:(\d+)ms")
TOKENS_PER_STEP = 393_216
PEAK_DATASHEET = 989e12  # NVIDIA's dense bf16 figure for the H100 SXM and the H200


def step_times(log: Path) -> dict[int, float]:
    """Step number -> its time in ms, from consecutive cumulative train_time lines (a log that prints every K steps
    gives each step of an interval the interval's mean); validation lines, which repeat a step with the clock
    stopped, are skipped."""
    cumulative: dict[int, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = STEP.match(line)
        if m and "val_loss" not in line:
            cumulative[int(m[1])] = float(m[3])
    steps = sorted(cumulative)
    times: dict[int, float] = {}
    for a, b in zip(steps, steps[1:]):
        for k in range(a + 1, b + 1):
            times[k] = (cumulative[b] - cumulative[a]) / (b - a)
    return times


def record_source(trial: Path) -> str | None:
    """The patched train_gpt.py of a record trial: the file beside its log, else the head of the script's own log
    (everything before its first '=====' line, cut where the companion kernels' source is appended)."""
    script = trial / "train_gpt.py"
    if script.is_file():
        return script.read_text()
    for own_log in sorted((trial / "logs").glob("*.txt")):
        head = []
        for line in own_log.read_text(errors="replace").splitlines(keepends=True):
            if SEPARATOR.match(line):
                break
            head.append(line)
        return re.split(r"\n\n-{40}\n# ", "".join(head), maxsplit=1)[0]
    return None


def mean_keys(window: int, seq_len: int) -> float:
    w = min(window, seq_len)
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


def record_flops_per_token(ws_short: int, ws_long: int, seq_len: int = 2048) -> float:
    d, vocab, hidden = 768, 50304, 3072
    dense = 10 * 4 * d * d + 11 * 2 * d * hidden + d * vocab
    attn = 4 * d * (8 * mean_keys(ws_short, seq_len) + 2 * mean_keys(ws_long, seq_len))
    return 3 * (2 * dense + attn)


def record_schedule(source: str) -> tuple[int, int, tuple[int, int]]:
    """(first step of the 393,216-token stage, last step, the stage's windows in tokens) from the patched script."""
    values, stages = script_values(source)
    scheduled = values["Hyperparameters.num_scheduled_iterations"]
    extension = values["Hyperparameters.num_extension_iterations"]
    durations = [s["duration"] for s in stages if s.get("duration") is not None]
    ends = [0, *[round(c * scheduled) for c in accumulate(durations[:-1])], scheduled + extension]
    big = next(i for i, s in enumerate(stages) if s["batch_size"] == TOKENS_PER_STEP)
    short, long = stages[big]["window_sizes"]
    return ends[big] + 1, ends[-1], (short * 128, long * 128)


def summary(times_ms: list[float], flops_per_token: float, peak: float) -> dict:
    step_ms = statistics.median(times_ms)
    tokens_s = TOKENS_PER_STEP / (step_ms / 1000)
    return {"steps": len(times_ms), "step_ms": round(step_ms, 1), "tokens_s": round(tokens_s),
            "flops_per_token": round(flops_per_token), "tflops": round(tokens_s * flops_per_token / 1e12, 1),
            "mfu_measured_peak": round(tokens_s * flops_per_token / peak, 4),
            "mfu_datasheet": round(tokens_s * flops_per_token / PEAK_DATASHEET, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ours", required=True, help="glob of our trainer's trial logs")
    ap.add_argument("--record", required=True, help="glob of the record script's trial directories")
    ap.add_argument("--skip", type=int, default=5, help="our first steps left out")
    ap.add_argument("--measured-peak", type=float, default=772.0,
                    help="the card's measured bf16 TFLOP/s (H200 772, docs/trainer.md; H100 798, the device notes)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    from trainer.config import parse_config
    from trainer.model import train_flops_per_token

    peak = a.measured_peak * 1e12
    ours = [t for log in sorted(glob.glob(a.ours)) for k, t in step_times(Path(log)).items() if k > a.skip]
    cfg = parse_config(["--preset", "gpt2"], environ={})
    rows = {"ours": summary(ours, train_flops_per_token(cfg, 2048, (2048, 2048)), peak)} if ours else {}
    record: list[float] = []
    windows = None
    for trial in sorted(glob.glob(a.record)):
        source, log = record_source(Path(trial)), Path(trial) / "train.log"
        if source is None or not log.is_file():
            continue
        first, last, windows = record_schedule(source)
        record += [t for k, t in step_times(log).items() if first + 2 <= k <= last]
    if record:
        rows["record"] = summary(record, record_flops_per_token(*windows), peak) | {"windows": list(windows)}
    if "ours" in rows and "record" in rows:
        rows["ratio_tokens_s"] = round(rows["ours"]["tokens_s"] / rows["record"]["tokens_s"], 3)
    print(f"| run | steps | step ms | tokens/s | model TFLOP/s | MFU (measured peak {a.measured_peak:g}) | "
          "MFU (989 datasheet) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("ours", "record"):
        if name in rows:
            r = rows[name]
            print(f"| {name} | {r['steps']} | {r['step_ms']} | {r['tokens_s']:,} | {r['tflops']} | "
                  f"{100 * r['mfu_measured_peak']:.1f}% | {100 * r['mfu_datasheet']:.1f}% |")
    if "ratio_tokens_s" in rows:
        print(f"\nours / record tokens/s: {rows['ratio_tokens_s']}")
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
