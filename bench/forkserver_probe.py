"""Would a fork server take torch's start out of every trial? Our trainer started fresh against forked from a process
that has already imported torch and its compiler (never touching CUDA), alternately, on warm compile caches.

docs/fleet.md ("Fourth GPU session"): a warm GPU trial spends 8.5 s of its 16.7 s before step 0 importing torch and,
on first use, `torch._dynamo` and Inductor. A per-machine fork server pays those imports once; this probe measured
the saving before it was built (it is now: orchestrator/warm/forkserver.py, `trainer.fork_server`; bench/duty_cycle.py
`--phases forked` measures it through orch): `fresh` runs `python -m trainer ARGS` as a job does today; `forked`
forks this process (which imported torch, torch._dynamo, Inductor and the trainer's modules, and made no CUDA call)
and runs `trainer.train.main(ARGS)` in the child, whose stdout goes to a pipe read here. Each run's wall is from
start (spawn or fork) to exit; its `startup_s` and timed training come from the trainer's final `@@metrics` line.
The first run of each kind fills the caches and is left out. Usage:

    .venv/bin/python bench/forkserver_probe.py --runs 4                       # CPU, tiny preset
    python3 bench/forkserver_probe.py --runs 4 --trainer-args "--preset gpt2 --device cuda --num-steps 20 ..."
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.trainer_throughput import metric_events  # noqa: E402

DEFAULT_ARGS = "--preset tiny --device cpu --compile 1 --num-steps 20 --extension-steps 0 --val-every 0"


def _final(stdout: str) -> dict:
    finals = [m for m in metric_events(stdout) if m.get("event") == "final"]
    if not finals:
        raise SystemExit(f"the trainer printed no final @@metrics line; its output ended:\n{stdout[-2000:]}")
    return finals[-1]


def fresh(args: list[str], env: dict) -> tuple[float, dict]:
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if out.returncode != 0:
        raise SystemExit(f"fresh trainer exited {out.returncode}: {out.stderr[-2000:]}")
    return wall, _final(out.stdout)


def forked(args: list[str]) -> tuple[float, dict]:
    read, write = os.pipe()
    began = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: the trainer as `python -m trainer` would run it, its stdout into the pipe
        os.close(read)
        os.dup2(write, 1)
        code = 1
        try:
            from trainer.train import main

            code = main(args)
        finally:
            sys.stdout.flush()
            os._exit(code or 0)
    os.close(write)
    with os.fdopen(read) as pipe:
        stdout = pipe.read()
    _, status = os.waitpid(pid, 0)
    wall = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"forked trainer exited {os.waitstatus_to_exitcode(status)}: {stdout[-2000:]}")
    return wall, _final(stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=4, help="measured runs of each kind (after one that fills the caches)")
    ap.add_argument("--trainer-args", default=DEFAULT_ARGS)
    ap.add_argument("--out", type=Path, help="write the table as JSON here")
    args = ap.parse_args()
    targs = shlex.split(args.trainer_args)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile-worker pool to carry across a fork
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    began = time.perf_counter()
    import torch  # the fork server's imports; no CUDA call: the child makes its own context
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401
    import trainer.model, trainer.optim, trainer.data  # noqa: F401,E401
    server_import_s = time.perf_counter() - began
    if torch.cuda.is_initialized():  # a child cannot use a CUDA context made before the fork
        raise SystemExit("the server's imports made a CUDA context: a forked trainer could not use the GPU")
    runs: dict[str, list[tuple[float, dict]]] = {"fresh": [], "forked": []}
    for i in range(args.runs + 1):
        for kind in ("fresh", "forked"):
            result = fresh(targs, env) if kind == "fresh" else forked(targs)
            if i:
                runs[kind].append(result)
    rows = []
    for kind, results in runs.items():
        walls = [w for w, _ in results]
        before = [sum(v for k, v in f["startup_s"].items()) for _, f in results]
        timed = [f["train_time_ms"] / 1000 for _, f in results]
        rows.append({"start": kind, "runs": len(results), "wall_s": round(statistics.median(walls), 2),
                     "before_step0_s": round(statistics.median(before), 2),
                     "timed_s": round(statistics.median(timed), 2),
                     "timed_over_wall": round(statistics.median(t / w for t, w in zip(timed, walls)), 3),
                     "startup_s": {k: round(statistics.median(f["startup_s"][k] for _, f in results), 2)
                                   for k in results[0][1]["startup_s"]}})
    ratio = rows[1]["wall_s"] / rows[0]["wall_s"]
    print(f"trainer {args.trainer_args}; {args.runs} runs each after one that fills the caches, alternating; "
          f"the server's imports took {server_import_s:.1f} s once")
    print("| start | runs | wall s (median) | before step 0 s | timed s | timed / wall | import | optimizers | compile |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        s = r["startup_s"]
        print(f"| {r['start']} | {r['runs']} | {r['wall_s']} | {r['before_step0_s']} | {r['timed_s']} | "
              f"{r['timed_over_wall']:.1%} | {s.get('import')} | {s.get('optimizers')} | {s.get('compile')} |")
    print(f"forked / fresh wall: {ratio:.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"trainer_args": args.trainer_args, "runs": args.runs,
                                        "server_import_s": round(server_import_s, 2), "rows": rows,
                                        "forked_over_fresh_wall": round(ratio, 3)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
