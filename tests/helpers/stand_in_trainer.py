"""A stand-in trainer for controller tests: a real process that prints the project's metric lines
(docs/contracts.md) with an outcome computed from its parameters, fast and deterministic.

The real trainer is exercised by tests/trainer and by the demo test; this one lets controller tests
run dozens of trials in seconds and inject failures on purpose (crash, divergence, hang).

Model: time = sum over stages of steps x per-stage cost (stage 1 cheapest); loss falls with the share
of the expensive stages, plus seeded noise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage-durations", default=os.environ.get("TRAINER_STAGE_DURATIONS", "0.34,0.33,0.33"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--wall-s", type=float, default=0.0, help="real seconds the run takes (spread over the steps)")
    ap.add_argument("--noise", type=float, default=0.002)
    ap.add_argument("--crash-at", type=int, default=-1, help="exit 1 without a final line at this step")
    ap.add_argument("--diverge-at", type=int, default=-1)
    ap.add_argument("--crash-once", default="", help="crash like --crash-at 30 unless this file exists (it is created): "
                    "a flaky failure that a retry gets past")
    ap.add_argument("--hang", action="store_true", help="never finish (for timeout and kill tests)")
    ap.add_argument("--stall-at", type=int, default=-1, help="at this step print one last line (with the wall time) "
                    "and then nothing more, never finishing: a hung run (for the progress watchdog)")
    ap.add_argument("--stall-once", default="", help="stall like --stall-at 30 unless this file exists (it is "
                    "created): a hang that a retry gets past")
    ap.add_argument("--marker", default="", help="append a line to this file at start (counts real starts)")
    ap.add_argument("--early-exit-at", type=float, default=float(os.environ.get("TRAINER_EARLY_EXIT_AT", 0)),
                    help="stop at the first val_loss <= X (0: off)")
    ap.add_argument("--max-steps", type=int, default=0, help="run length (0: --steps); the loss keeps falling after")
    ap.add_argument("--loss-mean", type=float, default=0.0, help="final val_loss mean, whatever the stages (0: the "
                    "stage model); the test controls the loss distribution with it and --noise")
    ap.add_argument("--ref-steps", type=int, default=0, help="with --step-loss: the step count the loss model is for")
    ap.add_argument("--step-loss", type=float, default=0.0, help="loss added per unit of ref_steps/steps - 1 (a "
                    "schedule cut to fewer steps ends higher)")
    ap.add_argument("--time-noise", type=float, default=0.0, help="relative std of the run's speed (seeded)")
    ap.add_argument("--real-time", action="store_true", help="report the real wall time of the step loop as its "
                    "train_time (with --wall-s: a trainer whose timed training is part of its process's life)")
    ap.add_argument("--cache-probe", action="store_true", help="look for this script's entry in "
                    "$TORCHINDUCTOR_CACHE_DIR (a compile cache's stand-in), write it if missing, and print "
                    "`stand-in: cache found|created PATH`")
    ap.add_argument("--read-data", default="", help="print `stand-in: data NAME BYTES SHA256` of this file (the "
                    "study's staged data, linked into the trial directory)")
    args = ap.parse_args()
    if args.cache_probe:
        cache_probe()
    if args.read_data:
        import hashlib

        blob = open(args.read_data, "rb").read()
        print(f"stand-in: data {args.read_data} {len(blob)} {hashlib.sha256(blob).hexdigest()}", flush=True)
    fractions = [float(x) for x in args.stage_durations.split(",")]
    if abs(sum(fractions) - 1) > 1e-6 or any(f < 0 for f in fractions):
        print(f"trainer: error: stage durations {fractions} must be >= 0 and sum to 1 (fix the study)", file=sys.stderr)
        return 2
    if args.marker:
        with open(args.marker, "a") as f:
            f.write(f"{os.getpid()} {args.stage_durations} {args.seed}\n")
    if args.stall_once:
        try:
            os.close(os.open(args.stall_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # the first run to get here
            args.stall_at = 30
        except FileExistsError:
            pass
    if args.crash_once and not os.path.exists(args.crash_once):
        open(args.crash_once, "w").close()
        args.crash_at = 30
    rng = random.Random(args.seed)
    # STAND_IN_SLOWDOWN (a fleet machine's env): this machine's steps take that much longer (hosts differ)
    speed = float(os.environ.get("STAND_IN_SLOWDOWN", "1"))
    if args.time_noise:  # its own stream: the loss draws stay as they were
        speed *= 1 + random.Random(f"time-{args.seed}").gauss(0.0, args.time_noise)
    costs = [21.0 * speed, 38.0 * speed, 55.0 * speed]
    total = args.max_steps or args.steps
    step_ms = [costs[min(i, 2)] for i, f in enumerate(fractions) for _ in range(round(f * args.steps))]
    step_ms = (step_ms + [costs[-1]] * total)[:total]
    final_loss = (args.loss_mean or 3.20 + 0.25 * fractions[0] ** 2) + rng.gauss(0.0, args.noise)
    if args.ref_steps and args.step_loss:
        final_loss += args.step_loss * (args.ref_steps / args.steps - 1)
    emit = lambda obj: print("@@metrics " + json.dumps(obj), flush=True)  # noqa: E731
    emit({"event": "start", "versions": {"python": sys.version.split()[0]}, "world_size": 1, "gpu_name": None})
    elapsed = 0.0
    loop_began = time.monotonic()
    for step in range(1, total + 1):
        if args.wall_s:
            time.sleep(args.wall_s / total)
        while args.hang:
            time.sleep(0.05)
        if step == args.stall_at:
            print(f"stand-in: stalling at step {step}, wall {time.time():.3f}", flush=True)
            while True:
                time.sleep(3600)
        elapsed = (time.monotonic() - loop_began) * 1000 if args.real_time else elapsed + step_ms[step - 1]
        if step == args.crash_at:
            print("Traceback (most recent call last):\nRuntimeError: simulated crash", flush=True)
            return 1
        if step == args.diverge_at:
            emit({"event": "final", "step": step, "total_steps": args.steps, "val_loss": None,
                  "train_time_ms": elapsed, "exit_reason": "diverged"})
            return 3
        if step % args.val_every == 0 or step == total:
            # falls to final_loss at --steps, then 0.1 per further --steps (steps up to --max-steps)
            loss = final_loss + (2.0 if step <= args.steps else 0.1) * (1 - step / args.steps)
            print(f"step:{step}/{total} val_loss:{loss:.4f} train_time:{elapsed:.0f}ms "
                  f"step_avg:{elapsed / step:.2f}ms", flush=True)
            emit({"event": "val", "step": step, "total_steps": total, "val_loss": round(loss, 4),
                  "train_time_ms": round(elapsed), "step_avg_ms": round(elapsed / step, 2)})
            if args.early_exit_at and round(loss, 4) <= args.early_exit_at and step < total:
                return final(emit, step, total, loss, elapsed, "early_exit")
    return final(emit, total, total, final_loss if total == args.steps else loss, elapsed, "completed")


def cache_probe() -> None:
    """What a compiled trainer does with its compile cache: reuse its entry when the folder has it, else make it.
    The entry is named by this script's content (a compile cache keys its entries by the code)."""
    import hashlib

    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not folder:
        print("stand-in: cache none (no TORCHINDUCTOR_CACHE_DIR)", flush=True)
        return
    entry = os.path.join(folder, "stand-in-" + hashlib.sha256(open(__file__, "rb").read()).hexdigest()[:12])
    found = os.path.exists(entry)
    if not found:
        with open(entry, "w") as f:
            f.write("compiled\n")
    print(f"stand-in: cache {'found' if found else 'created'} {entry}", flush=True)


def final(emit, step: int, total: int, loss: float, elapsed: float, reason: str) -> int:
    emit({"event": "final", "step": step, "total_steps": total, "val_loss": round(loss, 4),
          "train_time_ms": round(elapsed), "step_avg_ms": round(elapsed / step, 2), "tokens": 1000 * step,
          "peak_memory_mib": 10, "exit_reason": reason, "world_size": 1, "gpu_name": None,
          "versions": {"python": sys.version.split()[0]}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
