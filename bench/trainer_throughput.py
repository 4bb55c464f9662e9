"""Trainer throughput on one GPU: tokens/s and MFU of the GPT-2-small shape at seq 2048.

Each variant runs `python -m trainer` in its own process (so compile caches and memory do not leak
between them), reads the `@@metrics` lines and reports the timed step average after the untimed
compile warm-up. The bf16 matmul peak is measured on the device first (8192^3 GEMMs) and MFU is
reported against it (and against the dense spec peak when the GPU is known).

usage (on the GPU machine):
  python bench/trainer_throughput.py --data-dir DIR [--variants compile_flex,compile_flex_triton,...]
         [--steps 30] [--batch-tokens 262144] [--trainer-args "--train-files ..."] [--out results.json]
Prints a markdown table and writes JSON (one object per variant plus the device facts).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SPEC_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "B200": 2250.0}

VARIANTS = {
    # name: extra trainer flags
    "compile_flex": ["--compile", "1", "--attn", "flex", "--kernels", "torch"],
    "compile_flex_triton": ["--compile", "1", "--attn", "flex", "--kernels", "triton"],
    "compile_sdpa": ["--compile", "1", "--attn", "sdpa", "--kernels", "torch"],
    "compile_sdpa_triton": ["--compile", "1", "--attn", "sdpa", "--kernels", "triton"],
    "eager_sdpa": ["--compile", "0", "--attn", "sdpa", "--kernels", "torch"],
    # issue 21 item 4: our best variant (SDPA causal, FP8 head) beside FlashAttention's variable-length kernel with
    # documents kept apart, over the whole sequence and at the current record's third-stage windows (640/1408)
    "sdpa_fp8": ["--compile", "1", "--attn", "sdpa", "--fp8-head", "1"],
    "varlen_fp8": ["--compile", "1", "--attn", "varlen", "--fp8-head", "1"],
    "varlen_640_1408_fp8": ["--compile", "1", "--attn", "varlen", "--fp8-head", "1", "--stage-windows", "640/1408"],
    "flex_640_1408_fp8": ["--compile", "1", "--attn", "flex", "--fp8-head", "1", "--stage-windows", "640/1408"],
}


def metric_events(stdout: str) -> list[dict]:
    """The trainer's `@@metrics` objects (docs/contracts.md), in order."""
    return [json.loads(line[len("@@metrics "):]) for line in stdout.splitlines() if line.startswith("@@metrics ")]


def measure_peak_tflops() -> float:
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    reps = 50
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def run_variant(name, flags, a) -> dict:
    cmd = [sys.executable, "-m", "trainer", "--preset", "gpt2", "--data-dir", a.data_dir,
           "--stage-durations", "1", "--stage-seq-lens", str(a.seq_len), "--stage-batch-tokens",
           str(a.batch_tokens), "--stage-lr-mults", "1", "--stage-windows", a.window,
           "--num-steps", str(a.steps), "--extension-steps", "0",  # --steps N runs N steps, no extension
           "--val-every", "0", "--val-tokens", str(a.val_tokens),
           "--log-every", "5", "--micro-batch-tokens", str(a.micro_batch_tokens), *shlex.split(a.trainer_args),
           *flags]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=a.timeout)
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, rc = "timeout", 124
    wall = time.time() - t0
    metrics = metric_events(out)
    start = next((m for m in metrics if m["event"] == "start"), {})
    final = next((m for m in metrics if m["event"] == "final"), {})
    trains = [m for m in metrics if m["event"] == "train"]
    res = {"variant": name, "rc": rc, "wall_s": round(wall, 1), "command": " ".join(cmd)}
    if final.get("exit_reason") == "completed" and len(trains) >= 3:
        # steady state: difference between the last train event and one a few steps in (skips step 1-5)
        a0, a1 = trains[0], trains[-1]
        ms = (a1["train_time_ms"] - a0["train_time_ms"]) / (a1["step"] - a0["step"])
        fpt = start["flops_per_token"][0]
        tps = a.batch_tokens / (ms / 1000)
        res.update(step_ms=round(ms, 2), tokens_per_s=round(tps), flops_per_token=fpt,
                   model_tflops=round(fpt * tps / 1e12, 1), n_params=start["n_params"],
                   peak_memory_mib=final["peak_memory_mib"], gpu_name=final["gpu_name"],
                   train_loss=trains[-1]["train_loss"], versions=final["versions"])
    else:
        res["error"] = (err or "")[-2000:]
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--variants", default="compile_flex,compile_flex_triton,compile_sdpa")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-tokens", type=int, default=262144)
    p.add_argument("--micro-batch-tokens", type=int, default=32768)
    p.add_argument("--window", default="2048", help="attention window(s) SHORT/LONG in tokens")
    p.add_argument("--val-tokens", type=int, default=65536)
    p.add_argument("--timeout", type=int, default=300)
    p.add_argument("--trainer-args", default="", help="more trainer flags for every variant (e.g. --train-files)")
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT") or tempfile.gettempdir(),
                                                 "trainer_throughput.json"))
    a = p.parse_args()

    import torch

    gpu = torch.cuda.get_device_name(0)
    peak = measure_peak_tflops()
    spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in gpu), None)
    print(f"device: {gpu}, measured bf16 matmul peak {peak:.0f} TFLOP/s, spec {spec}", flush=True)
    results = {"gpu": gpu, "measured_peak_tflops": round(peak, 1), "spec_peak_tflops": spec,
               "torch": torch.__version__, "seq_len": a.seq_len, "batch_tokens": a.batch_tokens, "variants": []}
    for name in a.variants.split(","):
        r = run_variant(name, VARIANTS[name], a)
        if "model_tflops" in r:
            r["mfu_measured_peak"] = round(r["model_tflops"] / peak, 4)
            r["mfu_spec_peak"] = round(r["model_tflops"] / spec, 4) if spec else None
        results["variants"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k not in ("command", "versions")}), flush=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    print(f"\n| variant | step ms | tokens/s | model TFLOP/s | MFU (measured peak {peak:.0f}) | MFU (spec) "
          f"| peak mem MiB | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["variants"]:
        if "tokens_per_s" in r:
            spec_mfu = "" if r["mfu_spec_peak"] is None else f"{100 * r['mfu_spec_peak']:.1f}%"
            print(f"| {r['variant']} | {r['step_ms']} | {r['tokens_per_s']:,} | {r['model_tflops']} | "
                  f"{100 * r['mfu_measured_peak']:.1f}% | {spec_mfu} | {r['peak_memory_mib']} | {r['wall_s']} |")
        else:
            print(f"| {r['variant']} | failed rc={r['rc']} | | | | | | {r['wall_s']} |")


if __name__ == "__main__":
    main()
