"""The health check program: run ON the machine by its launcher (like a trial: in its container, with the slot's
CUDA_VISIBLE_DEVICES), it imports only the standard library and torch. The controller sends this file's text as
`python -c TEXT ARGS` (health_check.py), so nothing has to be installed on the machine but Python and torch.

It checks, and reports on its last line as `@@health {json}` (exit status 0 when healthy, 1 when not):
- the GPUs torch sees: as many as `--expect-count`, each named with `--expect-model` (a part of the name);
- on every device, a float32 matrix product agrees with a float64 product computed on the CPU, and every value is
  finite; on a GPU a bfloat16 product is timed (TFLOP/s, reported, not judged);
- with `--allreduce`, an all-reduce over all devices (NCCL on GPUs; gloo on CPU, `--world` processes) gives the
  right sum and finishes, processes started and process group initialised included, within `--allreduce-timeout`
  seconds; the ranks are separate processes, killed at the bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

MARK = "@@health "
#: one all-reduce rank: a process of its own (this program runs from `-c`, so it cannot be imported by a child)
RANK_PROGRAM = r'''
import json, os, sys, time
import torch, torch.distributed as dist
rank, world, backend = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ["ORCH_BACKEND"]
device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
if backend == "nccl":
    torch.cuda.set_device(device)
# a file store: no port to choose (a port found free and then closed can be taken before the ranks bind it)
dist.init_process_group(backend, init_method="file://" + os.environ["ORCH_STORE"], rank=rank, world_size=world,
                        device_id=device if backend == "nccl" else None)
numel = int(os.environ["ORCH_NUMEL"])
x = torch.full((numel,), float(rank + 1), device=device)
dist.all_reduce(x)
if backend == "nccl":
    torch.cuda.synchronize()
ok = bool((x == world * (world + 1) / 2).all())
iters, began = 5, time.perf_counter()
for _ in range(iters):
    dist.all_reduce(x)
if backend == "nccl":
    torch.cuda.synchronize()
seconds = (time.perf_counter() - began) / iters
dist.destroy_process_group()
if rank == 0:
    print(json.dumps({"ok": ok, "seconds": seconds, "bytes": numel * 4}), flush=True)
sys.exit(0 if ok else 1)
'''


def allreduce(world: int, backend: str, timeout_s: float, numel: int) -> tuple[dict, str | None]:
    """(figures, problem): `world` rank processes all-reduce a tensor; all must finish within `timeout_s`."""
    store_dir = tempfile.mkdtemp(prefix="orch-health-")
    env = {**os.environ, "ORCH_STORE": os.path.join(store_dir, "store"), "WORLD_SIZE": str(world),
           "ORCH_BACKEND": backend, "ORCH_NUMEL": str(numel)}
    try:
        return _allreduce(world, backend, timeout_s, env)
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)


def _allreduce(world: int, backend: str, timeout_s: float, env: dict) -> tuple[dict, str | None]:
    began = time.monotonic()
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_PROGRAM], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
             for r in range(world)]
    outputs = [b""] * world
    try:
        for r, proc in enumerate(ranks):
            outputs[r], _ = proc.communicate(timeout=max(0.01, began + timeout_s - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in ranks:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in ranks:
            proc.wait()
        return ({"world": world, "backend": backend, "seconds": round(time.monotonic() - began, 2)},
                f"the {backend} all-reduce over {world} devices did not finish within {timeout_s:g} s "
                "(process start, process group initialisation and the all-reduce)")
    elapsed = time.monotonic() - began
    figures = {"world": world, "backend": backend, "seconds": round(elapsed, 2)}
    failed = [r for r, proc in enumerate(ranks) if proc.returncode != 0]
    if failed:
        tail = outputs[failed[0]].decode(errors="replace").strip().splitlines()[-3:]
        return figures, (f"the {backend} all-reduce failed on rank {failed[0]} (exit status "
                         f"{ranks[failed[0]].returncode}): {' | '.join(tail)[-400:]}")
    try:
        result = json.loads(outputs[0].decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return figures, f"the {backend} all-reduce printed no result"
    per_op = result["seconds"]
    figures["op_ms"] = round(per_op * 1000, 3)
    if per_op > 0:  # bus bandwidth as nccl-tests computes it for an all-reduce
        figures["busbw_gbps"] = round(result["bytes"] * 2 * (world - 1) / world / per_op / 1e9, 1)
    return figures, None if result["ok"] else f"the {backend} all-reduce over {world} devices gave a wrong sum"


def matmul(torch, device, size: int) -> tuple[dict, str | None]:
    """A float32 product against a float64 CPU reference (a slice of rows), and a timed bfloat16 product on a GPU."""
    generator = torch.Generator().manual_seed(1234)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    rows = min(size, 64)
    reference = a[:rows].double() @ b.double()
    out = (a.to(device) @ b.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out = out.cpu()
    figures: dict = {"device": str(device), "size": size}
    if not torch.isfinite(out).all():
        return figures, f"the matrix product on {device} has non-finite values"
    error = float(((out[:rows].double() - reference).abs().max() / reference.abs().max()))
    figures["max_rel_err"] = error
    if error > 1e-3:  # float32 with TF32 off agrees to ~1e-6; TF32 to ~1e-3
        return figures, f"the matrix product on {device} is wrong by {error:.2e} (relative)"
    if device.type == "cuda":
        x, y = a.to(device, torch.bfloat16), b.to(device, torch.bfloat16)
        x @ y
        torch.cuda.synchronize(device)
        iters, began = 10, time.perf_counter()
        for _ in range(iters):
            x @ y
        torch.cuda.synchronize(device)
        figures["bf16_tflops"] = round(2 * size**3 * iters / (time.perf_counter() - began) / 1e12, 1)
    return figures, None


def main() -> int:
    ap = argparse.ArgumentParser(prog="orch-health-check")
    ap.add_argument("--device", choices=["cuda", "cpu"], required=True)
    ap.add_argument("--expect-count", type=int, default=0, help="GPUs torch must see (0: not checked)")
    ap.add_argument("--expect-model", default="", help="a part of every GPU's name ('': not checked)")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--allreduce", action="store_true")
    ap.add_argument("--world", type=int, default=2, help="CPU: gloo ranks of the all-reduce")
    ap.add_argument("--allreduce-timeout", type=float, default=60.0)
    ap.add_argument("--allreduce-numel", type=int, default=16 << 20)
    args = ap.parse_args()
    report: dict = {"ok": False, "problems": [], "devices": [], "host": socket.gethostname()}
    began = time.monotonic()

    def done() -> int:
        report["ok"] = not report["problems"]
        report["seconds"] = round(time.monotonic() - began, 2)
        print(MARK + json.dumps(report), flush=True)
        return 0 if report["ok"] else 1

    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - whatever keeps torch from loading is the finding
        report["problems"].append(f"torch cannot be imported: {type(exc).__name__}: {exc}")
        return done()
    report["torch"] = torch.__version__
    if args.device == "cuda":
        try:
            count = torch.cuda.device_count()
            available = torch.cuda.is_available()
        except Exception as exc:  # noqa: BLE001
            report["problems"].append(f"CUDA does not start: {type(exc).__name__}: {exc}")
            return done()
        report["visible"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        if not available or count == 0:
            report["problems"].append(f"torch sees no GPU (torch.cuda.is_available() is {available}, "
                                      f"CUDA_VISIBLE_DEVICES={report['visible']!r})")
            return done()
        names = [torch.cuda.get_device_name(i) for i in range(count)]
        report["gpus"] = names
        if args.expect_count and count != args.expect_count:
            report["problems"].append(f"torch sees {count} GPU(s), {args.expect_count} expected")
        wrong = [f"cuda:{i} is {n!r}" for i, n in enumerate(names) if args.expect_model.lower() not in n.lower()]
        if args.expect_model and wrong:
            report["problems"].append(f"{', '.join(wrong)}; the fleet file says gpu_type {args.expect_model!r}")
        torch.backends.cuda.matmul.allow_tf32 = False
        devices = [torch.device(f"cuda:{i}") for i in range(count)]
    else:
        devices = [torch.device("cpu")]
    for device in devices:
        try:
            figures, problem = matmul(torch, device, args.size)
        except Exception as exc:  # noqa: BLE001 - a CUDA error, out of memory: the device is not usable
            figures, problem = {"device": str(device)}, f"the matrix product on {device} failed: {type(exc).__name__}: {exc}"
        report["devices"].append(figures)
        if problem:
            report["problems"].append(problem)
    world = len(devices) if args.device == "cuda" else args.world
    if args.allreduce and world > 1 and not report["problems"]:
        figures, problem = allreduce(world, "nccl" if args.device == "cuda" else "gloo", args.allreduce_timeout,
                                     args.allreduce_numel)
        report["allreduce"] = figures
        if problem:
            report["problems"].append(problem)
    return done()


if __name__ == "__main__":
    sys.exit(main())
