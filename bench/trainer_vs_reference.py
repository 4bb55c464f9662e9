"""Our trainer against modded-nanogpt's 2025-08-23 record script, side by side on one multi-GPU machine,
then our trainer's scaling over 1, 2 and 4 GPUs.

Phase 1 (one GPU each, at the same time): the reference script (run from a copy outside this tree,
`--reference PATH`, world size 1 = its 8-step gradient accumulation) and our trainer's variants at the
GPT-2-small shape, seq 2048. Phase 2: our fastest variant under `torchrun --nproc_per_node=N` for N =
2 and 4 with the same global batch (262,144 tokens per step: fewer micro-batches per rank, as the
reference does), so tokens/s per GPU at N against N = 1 is the scaling efficiency.

The reference needs no edit of its code, only three constants for a short run (its step count,
validation size and cadence); they are replaced in the temporary copy it runs from. Its data
path is a folder of symlinks named like FineWeb's shards, pointing at our shards (same format).

usage (on the GPU machine):
  python bench/trainer_vs_reference.py --data-dir DIR --reference /path/train_gpt.py [--out-dir $OUT]
Prints markdown tables and writes trainer_vs_reference.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.trainer_throughput import SPEC_BF16_TFLOPS, measure_peak_tflops, metric_events  # noqa: E402

REF_TOKENS_PER_STEP = 8 * 48 * 1024  # the record's global batch: 8 sequences of 48Ki tokens
REF_STEP_LINE = re.compile(r"^step:(\d+)/(\d+) train_time:(\d+)ms")
REF_PATCHES = [  # (constant as written in the record script, value for a short run)
    ("num_iterations = 1695", "num_iterations = {steps}"),
    ("val_tokens = 10485760", "val_tokens = 262144"),
    ("val_loss_every = 125", "val_loss_every = 0"),
]

OURS = {  # name: trainer flags beyond the common ones
    "ours_sdpa_causal2048": ["--attn", "sdpa", "--stage-windows", "2048"],
    "ours_flex_docs2048": ["--attn", "flex", "--stage-windows", "2048"],
    "ours_flex_docs1024_2048": ["--attn", "flex", "--stage-windows", "1024/2048"],
    # the reference's tokens per step (393,216) in micro-batches of 64Ki tokens
    "ours_sdpa_causal2048_b393k_mb64k": ["--attn", "sdpa", "--stage-windows", "2048", "--stage-batch-tokens", "393216",
                                         "--micro-batch-tokens", "65536"],
    # the same with the fused Triton operators of kernels/ (issue 3)
    "ours_sdpa_causal2048_b393k_mb64k_triton": ["--attn", "sdpa", "--stage-windows", "2048", "--stage-batch-tokens",
                                                "393216", "--micro-batch-tokens", "65536", "--kernels", "triton"],
}
# the best one with the FP8 head, the cuDNN attention kernel, and both (issue 3)
_BEST = OURS["ours_sdpa_causal2048_b393k_mb64k"]
OURS.update({
    "ours_sdpa_causal2048_b393k_mb64k_fp8": _BEST + ["--fp8-head", "1"],
    "ours_sdpa_causal2048_b393k_mb64k_cudnn": _BEST + ["--sdpa-backend", "cudnn"],
    "ours_sdpa_causal2048_b393k_mb64k_fp8_cudnn": _BEST + ["--fp8-head", "1", "--sdpa-backend", "cudnn"],
    # where the time goes: the same at sequence 1024 (half the keys per query), and flex with documents masked apart
    "ours_sdpa_causal1024_b393k_mb64k": _BEST + ["--stage-seq-lens", "1024", "--stage-windows", "1024"],
    "ours_flex_docs1024_2048_b393k_mb64k": _BEST + ["--attn", "flex", "--stage-windows", "1024/2048"],
    # session 4: the cross-entropy kernel is the default on CUDA (--ce-kernel auto); the control without it,
    # and windows of 512/1024 (the reference's windows grow 128 -> 1792 and average about 960 over its run)
    "ours_sdpa_causal2048_b393k_mb64k_cetorch": _BEST + ["--ce-kernel", "torch"],
    "ours_flex_docs512_1024_b393k_mb64k_fp8": _BEST + ["--attn", "flex", "--stage-windows", "512/1024",
                                                       "--fp8-head", "1"],
})


def our_command(flags, a, world: int) -> list[str]:
    base = [sys.executable, "-m", "trainer"] if world == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", "-m", "trainer"]
    return base + ["--preset", "gpt2", "--data-dir", a.data_dir, "--stage-durations", "1",
                   "--stage-seq-lens", "2048", "--stage-batch-tokens", str(a.batch_tokens), "--stage-lr-mults", "1",
                   "--num-steps", str(a.steps), "--extension-steps", "0",  # --steps N runs N steps, no extension
                   "--val-every", "0", "--val-tokens", "65536", "--log-every", "5",
                   "--micro-batch-tokens", "32768", "--compile", "1", *flags]  # later flags win


def batch_tokens(flags, a) -> int:
    return int(flags[flags.index("--stage-batch-tokens") + 1]) if "--stage-batch-tokens" in flags else a.batch_tokens


def our_result(name, out: str, rc: int, wall: float, world: int, a, peak: float) -> dict:
    tokens = batch_tokens(OURS[name.split(" ")[0]], a)
    metrics = metric_events(out)
    start = next((m for m in metrics if m["event"] == "start"), {})
    final = next((m for m in metrics if m["event"] == "final"), {})
    trains = [m for m in metrics if m["event"] == "train"]
    res = {"name": name, "gpus": world, "rc": rc, "wall_s": round(wall, 1)}
    if final.get("exit_reason") != "completed" or len(trains) < 3:
        res["error"] = out[-3000:]
        return res
    t0, t1 = trains[0], trains[-1]  # steady state: skips the first log interval
    ms = (t1["train_time_ms"] - t0["train_time_ms"]) / (t1["step"] - t0["step"])
    tps = tokens / (ms / 1000)
    fpt = start["flops_per_token"][0]
    res.update(step_ms=round(ms, 2), batch_tokens=tokens, tokens_per_s=round(tps), tokens_per_s_per_gpu=round(tps / world),
               model_tflops_per_gpu=round(fpt * tps / world / 1e12, 1),
               mfu=round(fpt * tps / world / 1e12 / peak, 4), peak_memory_mib=final.get("peak_memory_mib"),
               warmup_s=final.get("warmup_s"), train_loss=trains[-1].get("train_loss"))
    return res


def reference_setup(a, work: str) -> list[str]:
    """A temp dir with the patched reference copy and FineWeb-named symlinks to our shards."""
    src = open(a.reference).read()
    for old, new in REF_PATCHES:
        if old not in src:
            raise SystemExit(f"{a.reference}: expected `{old}` in the reference script (is it commit 30d8a25a?)")
        src = src.replace(old, new.format(steps=a.ref_steps))
    with open(os.path.join(work, "train_gpt.py"), "w") as f:
        f.write(src)
    shards = os.path.join(work, "data", "fineweb10B")
    os.makedirs(shards)
    train = sorted(glob.glob(os.path.join(a.data_dir, "*train*.bin")))
    val = sorted(glob.glob(os.path.join(a.data_dir, "*val*.bin")))
    for i in range(8):  # the reference does not cycle its shards: enough names for the run
        os.symlink(os.path.abspath(train[i % len(train)]), os.path.join(shards, f"fineweb_train_{i + 1:06d}.bin"))
        os.symlink(os.path.abspath(val[i % len(val)]), os.path.join(shards, f"fineweb_val_{i:06d}.bin"))
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_gpt.py"]


def reference_result(out: str, rc: int, wall: float) -> dict:
    steps = [(int(m.group(1)), int(m.group(3))) for m in map(REF_STEP_LINE.match, out.splitlines()) if m]
    res = {"name": "modded-nanogpt 2025-08-23 (ref)", "gpus": 1, "rc": rc, "wall_s": round(wall, 1)}
    if len(steps) < 20:
        res["error"] = out[-3000:]
        return res
    if rc != 0:  # stopped at the phase timeout: the steps it made still give a (partial) average
        res["partial_steps"] = steps[-1][0]
    (s0, t0), (s1, t1) = steps[9], steps[-1]  # skip 10 steps
    ms = (t1 - t0) / (s1 - s0)
    res.update(step_ms=round(ms, 2), tokens_per_s=round(REF_TOKENS_PER_STEP / (ms / 1000)),
               tokens_per_s_per_gpu=round(REF_TOKENS_PER_STEP / (ms / 1000)))
    peak = re.search(r"peak memory allocated: (\d+) MiB", out)
    res["peak_memory_mib"] = int(peak.group(1)) if peak else None
    return res


def visible_gpus() -> list[str]:
    import torch

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return env.split(",") if env else [str(i) for i in range(torch.cuda.device_count())]


def start(cmd, gpus: list[str], cwd: str, log: str):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpus), PYTHONUNBUFFERED="1")
    f = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f, time.time()


def finish(job, timeout: float):
    proc, f, t0 = job
    try:
        rc = proc.wait(timeout=max(1, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too: they would hold the GPU
        proc.wait()
        rc = 124
    f.close()
    return rc, open(f.name, errors="replace").read(), time.time() - t0


def table(rows, ref_tps) -> str:
    lines = ["| run | GPUs | step ms | tokens/s | tokens/s per GPU | vs reference | MFU/GPU | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['name']} | {r['gpus']} | failed (rc {r['rc']}) | | | | | |")
            continue
        ratio = f"{r['tokens_per_s_per_gpu'] / ref_tps:.2f}x" if ref_tps else ""
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else ""
        lines.append(f"| {r['name']} | {r['gpus']} | {r['step_ms']} | {r['tokens_per_s']:,} | "
                     f"{r['tokens_per_s_per_gpu']:,} | {ratio} | {mfu} | {r.get('peak_memory_mib')} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--reference", help="modded-nanogpt train_gpt.py at commit 30d8a25a (phase 'ref')")
    p.add_argument("--phases", default="ref,ours,scaling", help="any of ref, ours, scaling")
    p.add_argument("--variants", default=",".join(list(OURS)[:3]), help=f"ours: any of {', '.join(OURS)}")
    p.add_argument("--steps", type=int, default=40, help="our steps per run")
    p.add_argument("--ref-steps", type=int, default=100)
    p.add_argument("--batch-tokens", type=int, default=262144)
    p.add_argument("--scaling", default="2,4", help="GPU counts for phase 'scaling'")
    p.add_argument("--scaling-variant", default="", help="default: the fastest of phase 'ours'")
    p.add_argument("--phase-timeout", type=int, default=300, help="seconds for the reference and phase 'ours'")
    p.add_argument("--scale-timeout", type=int, default=150, help="seconds for each scaling run")
    p.add_argument("--tag", default="", help="suffix of the output files (several runs at once)")
    p.add_argument("--out-dir", default=os.environ.get("OUT") or tempfile.gettempdir())
    a = p.parse_args()
    phases = set(a.phases.split(","))

    import torch

    gpus = visible_gpus()
    gpu = torch.cuda.get_device_name(0)
    peak = measure_peak_tflops()
    print(f"device: {len(gpus)} x {gpu} (visible {','.join(gpus)}), measured bf16 matmul peak {peak:.0f} TFLOP/s, "
          f"torch {torch.__version__}", flush=True)
    out_json = os.path.join(a.out_dir, f"trainer_vs_reference{a.tag}.json")
    results = {"gpu": gpu, "gpus": gpus, "measured_peak_tflops": round(peak, 1),
               "spec_peak_tflops": next((v for k, v in SPEC_BF16_TFLOPS.items() if k in gpu), None),
               "torch": torch.__version__, "batch_tokens": a.batch_tokens, "runs": []}
    logs = tempfile.mkdtemp(prefix="tvr-logs-")

    def record(r):
        results["runs"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "error"}), flush=True)
        if "error" in r:
            print(f"--- {r['name']} output tail ---\n{r['error'][-1500:]}", flush=True)
        json.dump(results, open(out_json, "w"), indent=1)

    # the reference and our variants, one GPU each, at once
    jobs, free = {}, list(gpus)
    if "ref" in phases:
        work = tempfile.mkdtemp(prefix="tvr-ref-")
        jobs["ref"] = start(reference_setup(a, work), [free.pop(0)], work, os.path.join(logs, "ref.log"))
    if "ours" in phases:
        for name in a.variants.split(","):
            if free:
                jobs[name] = start(our_command(OURS[name], a, 1), [free.pop(0)], ROOT, os.path.join(logs, f"{name}.log"))
    deadline = time.time() + a.phase_timeout
    for name, job in jobs.items():
        rc, out, wall = finish(job, deadline - time.time())
        record(reference_result(out, rc, wall) if name == "ref" else our_result(name, out, rc, wall, 1, a, peak))
    if "ref" in jobs:
        shutil.copy(os.path.join(logs, "ref.log"), os.path.join(a.out_dir, f"reference{a.tag}.log"))

    # our variant on several GPUs, same global batch
    if "scaling" in phases:
        ours = [r for r in results["runs"] if r["name"] in OURS and "tokens_per_s" in r]
        base = a.scaling_variant or (max(ours, key=lambda r: r["tokens_per_s"])["name"] if ours else "")
        single = next((r for r in ours if r["name"] == base), None)
        for world in [int(x) for x in a.scaling.split(",") if x and int(x) <= len(gpus)]:
            job = start(our_command(OURS[base], a, world), gpus[:world], ROOT, os.path.join(logs, f"scale{world}.log"))
            rc, out, wall = finish(job, a.scale_timeout)
            r = our_result(f"{base} x{world}", out, rc, wall, world, a, peak)
            if single and "tokens_per_s" in r:
                r["efficiency_vs_1gpu"] = round(r["tokens_per_s_per_gpu"] / single["tokens_per_s_per_gpu"], 3)
            record(r)

    ref = next((r for r in results["runs"] if r["name"].startswith("modded") and "tokens_per_s" in r), None)
    print()
    print(table(results["runs"], ref["tokens_per_s_per_gpu"] if ref else None))
    print(f"\nwrote {out_json}")


if __name__ == "__main__":
    main()
