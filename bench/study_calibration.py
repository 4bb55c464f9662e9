"""Calibrate a study's trainer configuration before a search: run it with several seeds, one run per
GPU at a time, and report the train time, the final val_loss and their spread.

A stage-duration study needs a configuration whose run takes a chosen time (30-60 s here) and a
val_loss target that the baseline schedule hits about half the time; this measures both, plus the
untimed compile warm-up and the wall time a trial really costs (startup, warm-up, validation).

usage (on the GPU machine):
  python bench/study_calibration.py --seeds 1,2,3,4,5,6,7,8 [--gpus 4] -- TRAINER FLAGS...
Prints a markdown table and writes study_calibration.json to $OUT (or the temp dir).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from queue import Queue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.trainer_throughput import metric_events  # noqa: E402


def run_one(seed: int, gpu: str, flags: list[str]) -> dict:
    cmd = [sys.executable, "-m", "trainer", *flags, "--seed", str(seed)]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES=gpu, PYTHONUNBUFFERED="1"))
    wall = time.time() - t0
    metrics = metric_events(p.stdout)
    final = next((m for m in metrics if m["event"] == "final"), {})
    vals = [(m["step"], m["val_loss"], m["train_time_ms"]) for m in metrics if m["event"] == "val"]
    res = {"seed": seed, "gpu": gpu, "rc": p.returncode, "wall_s": round(wall, 1),
           "exit_reason": final.get("exit_reason"), "val_curve": vals}
    if final.get("exit_reason") == "completed":
        res.update(val_loss=final["val_loss"], train_time_s=round(final["train_time_ms"] / 1000, 2),
                   warmup_s=final.get("warmup_s"), step_avg_ms=final.get("step_avg_ms"))
    else:
        res["error"] = (p.stderr or p.stdout)[-2000:]
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="1,2,3,4")
    p.add_argument("--gpus", type=int, default=0, help="GPUs to use (0: all visible)")
    p.add_argument("--out-dir", default=os.environ.get("OUT") or tempfile.gettempdir())
    p.add_argument("flags", nargs=argparse.REMAINDER, help="-- then the trainer's flags")
    a = p.parse_args()
    flags = a.flags[1:] if a.flags[:1] == ["--"] else a.flags

    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    gpus = gpus[: a.gpus or len(gpus)]
    n = len(gpus)
    free: Queue = Queue()
    for g in gpus:  # physical ids: each run gets one of them as its CUDA_VISIBLE_DEVICES
        free.put(g)

    def on_free_gpu(seed):
        gpu = free.get()
        try:
            return run_one(seed, gpu, flags)
        finally:
            free.put(gpu)

    seeds = [int(s) for s in a.seeds.split(",")]
    t0 = time.time()
    with ThreadPoolExecutor(n) as pool:
        runs = list(pool.map(on_free_gpu, seeds))
    ok = [r for r in runs if "val_loss" in r]
    summary = {"flags": flags, "gpus": n, "gpu_name": torch.cuda.get_device_name(0), "wall_s": round(time.time() - t0, 1),
               "runs": runs}
    if ok:
        losses = sorted(r["val_loss"] for r in ok)
        times = [r["train_time_s"] for r in ok]
        summary.update(val_loss_mean=round(statistics.mean(losses), 4), val_loss_median=statistics.median(losses),
                       val_loss_std=round(statistics.stdev(losses), 4) if len(losses) > 1 else None,
                       train_time_mean_s=round(statistics.mean(times), 2),
                       wall_mean_s=round(statistics.mean(r["wall_s"] for r in ok), 1))
    out = os.path.join(a.out_dir, "study_calibration.json")
    json.dump(summary, open(out, "w"), indent=1)
    print("| seed | GPU | exit | val_loss | train time s | warm-up s | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['seed']} | {r['gpu']} | {r['exit_reason']} | {r.get('val_loss', '')} | {r.get('train_time_s', '')} "
              f"| {r.get('warmup_s', '')} | {r['wall_s']} |")
        if "error" in r:
            print(r["error"][-1500:])
    if ok:
        print(f"\nval_loss mean {summary['val_loss_mean']} median {summary['val_loss_median']} std "
              f"{summary['val_loss_std']}; train time mean {summary['train_time_mean_s']} s; wall mean "
              f"{summary['wall_mean_s']} s; all runs {summary['wall_s']} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
