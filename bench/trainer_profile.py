"""Where one training step's GPU time goes: the trainer's own step, phase by phase and kernel by kernel.

Builds the trainer exactly as `python -m trainer` does with the given flags (setup and the untimed
compile warm-up), then
  1. times --steps steps phase by phase with CUDA events: the batch fetch (host time: building rows,
     pinning, the copy), forward + backward over the micro-batches, the optimizer step (all-reduce
     included when distributed);
  2. profiles --profile-steps more steps with torch.profiler and sums the kernels' GPU time per step,
     by category (matmul, attention, nccl, fused Triton, copies, other) and by kernel.
GPU busy = kernel time / wall time of the profiled steps: what is left is idle time between kernels.

usage (on the GPU machine):
  python bench/trainer_profile.py --label NAME [--steps 6] [--out FILE.json] -- TRAINER FLAGS...
Prints markdown tables and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CATEGORIES = [  # (category, kernel-name pattern), first match wins
    ("attention", re.compile(r"flash|fmha|attention|flex|cudnn.*sdpa|sdpa", re.I)),
    ("nccl", re.compile(r"nccl", re.I)),
    ("matmul", re.compile(r"gemm|cutlass|nvjet|xmma|sm90_|sm80_|cublas|scaled_mm|triton_tem|splitk", re.I)),
    ("triton (fused by inductor)", re.compile(r"^triton_", re.I)),
    ("copy / memset", re.compile(r"memcpy|memset|copy|cat|fill", re.I)),
]
ANNOTATION = re.compile(r"^(Optimizer\.|ProfilerStep|## )")


def category(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if pattern.search(name):
            return cat
    return "other"


def build(flags):
    from trainer.config import parse_config
    from trainer.data import resolve_files
    from trainer.train import Run

    cfg = parse_config(flags)
    train_files, val_files = resolve_files(cfg)
    run = Run(cfg, train_files, val_files)
    run.setup()
    run.warmup()
    return run


def time_phases(run, steps: int) -> dict:
    torch = run.torch
    fetch_ms, fb_ms, opt_ms, wall_ms = [], [], [], []
    for s in range(steps):
        run.sync()
        t0 = time.perf_counter()
        e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        fetched = run.fetch(s)
        t1 = time.perf_counter()
        e[0].record()
        run.forward_backward(s, fetched)
        e[1].record()
        run.optimizer_step(s)
        e[2].record()
        run.sync()
        wall_ms.append((time.perf_counter() - t0) * 1000)
        fetch_ms.append((t1 - t0) * 1000)
        fb_ms.append(e[0].elapsed_time(e[1]))
        opt_ms.append(e[1].elapsed_time(e[2]))
    skip = 1 if steps > 2 else 0  # the first timed step may still allocate

    def mean(xs):
        xs = xs[skip:]
        return sum(xs) / len(xs)

    return {"fetch_host_ms": mean(fetch_ms), "forward_backward_ms": mean(fb_ms), "optimizer_ms": mean(opt_ms),
            "step_wall_ms": mean(wall_ms)}


def profile_kernels(run, steps: int, first_step: int) -> dict:
    torch = run.torch
    from torch.profiler import ProfilerActivity, profile

    run.sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for s in range(first_step, first_step + steps):
            run.train_step(s)
        run.sync()
        wall_ms = (time.perf_counter() - t0) * 1000 / steps
    kernels = {}
    for ev in prof.events():
        if getattr(ev, "device_type", None) is None or ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if ANNOTATION.match(ev.name):  # a range around kernels (e.g. the optimizer step), not a kernel
            continue
        k = kernels.setdefault(ev.name, [0, 0.0])
        k[0] += 1
        k[1] += ev.device_time_total / 1000.0
    per_step = {n: (c / steps, ms / steps) for n, (c, ms) in kernels.items()}
    cats: dict = {}
    for n, (_, ms) in per_step.items():
        cats[category(n)] = cats.get(category(n), 0.0) + ms
    busy = sum(cats.values())
    top = sorted(per_step.items(), key=lambda kv: -kv[1][1])[:30]
    return {"wall_ms": wall_ms, "kernel_ms": busy, "busy": busy / wall_ms, "categories": cats,
            "top": [{"name": n, "calls": c, "ms": ms, "category": category(n)} for n, (c, ms) in top]}


def report(label: str, phases: dict, prof: dict) -> str:
    lines = [f"### {label}", "", "| phase (CUDA events) | ms per step |", "| --- | --- |"]
    for k in ("fetch_host_ms", "forward_backward_ms", "optimizer_ms", "step_wall_ms"):
        lines.append(f"| {k[:-3].replace('_', ' ')} | {phases[k]:.1f} |")
    lines += ["", f"Profiled: {prof['wall_ms']:.1f} ms per step wall, kernels {prof['kernel_ms']:.1f} ms "
              f"(GPU busy {100 * prof['busy']:.1f}%)", "", "| category | ms per step | share of kernel time |",
              "| --- | --- | --- |"]
    for cat, ms in sorted(prof["categories"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {cat} | {ms:.1f} | {100 * ms / prof['kernel_ms']:.1f}% |")
    lines += ["", "| kernel | category | calls per step | ms per step |", "| --- | --- | --- | --- |"]
    for k in prof["top"]:
        lines.append(f"| `{k['name'][:110]}` | {k['category']} | {k['calls']:g} | {k['ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--steps", type=int, default=6, help="steps timed phase by phase")
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON file")
    ap.add_argument("flags", nargs=argparse.REMAINDER, help="-- then the trainer's flags")
    a = ap.parse_args(argv)
    flags = a.flags[1:] if a.flags[:1] == ["--"] else a.flags
    run = build(flags)
    if not run.is_cuda:
        print("trainer_profile: needs a CUDA GPU (kernel times)", file=sys.stderr)
        return 2
    phases = time_phases(run, a.steps)
    prof = profile_kernels(run, a.profile_steps, a.steps)
    text = report(a.label, phases, prof)
    print(text, flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"label": a.label, "flags": flags, "phases": phases, "profile": prof,
                       "gpu": run.torch.cuda.get_device_name(run.device)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
