"""The machine health check's GPU path on a real GPU machine (orchestrator/liveness/check_program.py): what the CPU
tests cannot run. Needs only Python and torch with CUDA (the program imports nothing else), so it runs on the device
machines as they come:

    python bench/health_check.py                 # every GPU; prints one JSON object, exit 0 when every case held
    python bench/health_check.py --out DIR       # also writes DIR/health_check.json

Cases, each run as the controller runs the program (`python -c PROGRAM ARGS`, CUDA_VISIBLE_DEVICES set):
1. healthy: every GPU visible and of the model nvidia-smi names, a float32 product right on each, bf16 TFLOP/s;
   with 2+ GPUs an NCCL all-reduce over all of them within 60 s (bus bandwidth reported);
2. wrong model expected (the fleet file says another gpu_type): must fail, naming the GPU and the expected model;
3. more GPUs expected than visible: must fail, naming both counts;
4. with 2+ GPUs, an all-reduce bound too tight to start NCCL (0.05 s): must fail with the bound's message;
5. the all-reduce's rank program under NCCL with a world of one rank (runs on a one-GPU machine too).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROGRAM = Path(__file__).resolve().parents[1] / "orchestrator" / "liveness" / "check_program.py"
MARK = "@@health "


def gpu_names() -> list[str]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def run(args: list[str], visible: str, timeout_s: float = 300) -> tuple[dict, float]:
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-c", PROGRAM.read_text(), *args], capture_output=True, text=True,
                            timeout=timeout_s, env={**os.environ, "CUDA_VISIBLE_DEVICES": visible})
    seconds = time.monotonic() - began
    lines = [l for l in result.stdout.splitlines() if l.startswith(MARK)]
    if not lines:
        return {"ok": None, "problems": [f"no report (exit {result.returncode}): {result.stderr[-500:]}"]}, seconds
    report = json.loads(lines[-1][len(MARK):])
    report["exit_status"] = result.returncode
    return report, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--size", type=int, default=8192)
    args = ap.parse_args()
    names = gpu_names()
    count, visible = len(names), ",".join(str(i) for i in range(len(names)))
    model = names[0].split()[1] if len(names[0].split()) > 1 else names[0]  # "NVIDIA H100 80GB HBM3" -> "H100"
    base = ["--device", "cuda", "--size", str(args.size), "--expect-count", str(count)]
    cases = {}
    report, seconds = run(base + ["--expect-model", model] + (["--allreduce", "--allreduce-timeout", "60"]
                                                                 if count > 1 else []), visible)
    cases["healthy"] = {"held": report.get("ok") is True, "seconds": round(seconds, 1), "report": report}
    report, seconds = run(base + ["--expect-model", "A100" if "A100" not in model else "H100"], visible)
    cases["wrong_model"] = {"held": report.get("ok") is False and any("the fleet file says gpu_type" in p
                                                                      for p in report["problems"]),
                            "seconds": round(seconds, 1), "problems": report.get("problems")}
    report, seconds = run(["--device", "cuda", "--size", "1024", "--expect-count", str(count + 1)], visible)
    cases["missing_gpu"] = {"held": report.get("ok") is False and any(f"torch sees {count} GPU(s), {count + 1} expected"
                                                                      in p for p in report["problems"]),
                            "seconds": round(seconds, 1), "problems": report.get("problems")}
    if count > 1:
        report, seconds = run(["--device", "cuda", "--size", "1024", "--allreduce", "--allreduce-timeout", "0.05"],
                              visible)
        cases["allreduce_bound"] = {"held": report.get("ok") is False and any("did not finish within 0.05 s" in p
                                                                              for p in report["problems"]),
                                    "seconds": round(seconds, 1), "problems": report.get("problems")}
    else:
        cases["allreduce_bound"] = {"held": None, "skipped": "one GPU: the NCCL all-reduce needs two or more"}
    # the rank program under NCCL on one GPU (a world of 1): the code path a multi-GPU check takes, on any machine
    spec = importlib.util.spec_from_file_location("check_program", PROGRAM)
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    figures, problem = program.allreduce(1, "nccl", 120.0, 16 << 20)
    cases["nccl_one_rank"] = {"held": problem is None, "figures": figures, "problem": problem}
    summary = {"gpus": names, "python": sys.version.split()[0], "cases": cases,
               "all_held": all(c["held"] is not False for c in cases.values())}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "health_check.json").write_text(text + "\n")
    return 0 if summary["all_held"] else 1


if __name__ == "__main__":
    sys.exit(main())
