"""Does a trainer forked from the fork server compute the same FX graph cache key as a fresh process?

The seventh GPU session (docs/fleet.md) saw the first forked trial on a machine miss the FX graph cache that fresh
trials with the same flags and environment had filled (3 misses; then every forked trial hit the forked one's
entries, and fresh trials hit the fresh ones'). On CPU a forked child hits a fresh process's entries. This probe
compiles one small function (forward and backward) three times on shared empty caches: in a fresh process, in a
child forked from a server started as orchestrator/warm/forkserver.py starts one (its environment, its preload,
its compile keys), and fresh again; it prints each run's FX graph / AOTAutograd cache hits and misses and, where
the keys differ, the lines of Inductor's hash details that differ (logged by torch._inductor.codecache at debug).
A fourth run tests one candidate fix: a forked child that first clears every functools cache of torch and triton the
server filled (a value the server computed without the job's environment or a GPU would else outlive the fork), on a
copy of the caches as the first fresh run left them: if it hits them, such a stale value is the cause, and the list
of caches it cleared names the candidates.

    .venv/bin/python bench/fork_cache_key_probe.py                 # CPU
    python3 bench/fork_cache_key_probe.py --device cuda --out DIR  # DIR/fork_cache_key_probe.json
    python3 bench/fork_cache_key_probe.py --device cuda --trainer-args "--preset gpt2 --device cuda ..."  # the trainer
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config.study import ForkServer  # noqa: E402
from orchestrator.warm import forkserver  # noqa: E402

PRELOAD = ForkServer().preload  # the fork server's default


def compile_once(device: str, details_file: str, trainer_args: str = "") -> dict:
    """Compile and run a small function with its backward, or our trainer with `trainer_args` in this process; the
    cache counters and the hash details logged."""
    import logging

    import torch
    from torch._dynamo.utils import counters

    handler = logging.FileHandler(details_file)
    handler.setLevel(logging.DEBUG)
    log = logging.getLogger("torch._inductor.codecache")
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)

    if trainer_args:
        from trainer.train import main as train

        train(shlex.split(trainer_args))
    else:
        def f(x, w):
            return torch.nn.functional.gelu(x @ w).square().mean()

        x = torch.randn(64, 64, device=device)
        w = torch.randn(64, 64, device=device, requires_grad=True)
        torch.compile(f)(x, w).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    found = {f"{group}.{k}": v for group in ("inductor", "aot_autograd") for k, v in counters[group].items()
             if "cache" in k}
    handler.flush()
    return found


def hash_details(path: str) -> list[str]:
    text = Path(path).read_text() if Path(path).exists() else ""
    return [line for line in text.splitlines() if line.startswith("[")]  # "[hash] name: value", one per key part


def run_fresh(args, env, tag) -> dict:
    out = subprocess.run([sys.executable, __file__, "child", "--device", args.device, "--tag", tag, "--work",
                          str(args.work), f"--trainer-args={args.trainer_args}"],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"fresh run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_forked(args, env, clear: bool = False) -> dict:
    """A server as the fork server starts one (its environment, preload, compile keys), which forks the child;
    `clear`: the child clears the library caches the server filled first."""
    server_env = forkserver.server_environment(env, forkserver.import_env(env))  # PYTHONPATH among its imports
    out = subprocess.run([sys.executable, __file__, "server", "--device", args.device, "--work", str(args.work),
                          "--job-env", json.dumps(env), f"--trainer-args={args.trainer_args}",
                          *(["--clear-caches"] if clear else [])],
                         env=server_env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"forked run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(args):
    details = str(args.work / f"details-{args.tag}.log")
    counts = compile_once(args.device, details, args.trainer_args)
    print(json.dumps({"tag": args.tag, "counters": counts, "details": details}))


def clear_library_caches(prefixes=("torch", "triton")) -> list[str]:
    """Empty every functools cache that holds something in the modules of `prefixes` (module functions and the static
    and class methods of their classes); their names. (Walked through sys.modules: the server froze its objects, and
    gc.get_objects does not list frozen ones.)"""
    cleared = []
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in prefixes:
            continue
        for attr, value in list(vars(module).items()):
            found = [(attr, value)]
            if isinstance(value, type) and value.__module__ == name:
                found = [(f"{attr}.{k}", getattr(v, "__func__", v)) for k, v in vars(value).items()]
            for label, fn in found:
                if isinstance(fn, functools._lru_cache_wrapper) and fn.cache_info().currsize:
                    fn.cache_clear()
                    cleared.append(f"{name}.{label}")
    return sorted(set(cleared))


def server(args):
    error, seconds = forkserver._preload(PRELOAD)
    if error:
        raise SystemExit(f"preload: {error}")
    gc.freeze()  # as the fork server does before it forks
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the job's environment, as the server's child takes it
        code = 1
        try:
            os.close(read)
            os.environ.clear()
            os.environ.update(json.loads(args.job_env))
            tag = "forked-cleared" if args.clear_caches else "forked"
            cleared = clear_library_caches() if args.clear_caches else None
            details = str(args.work / f"details-{tag}.log")
            counts = compile_once(args.device, details, args.trainer_args)
            result = {"tag": tag, "counters": counts, "details": details, "preload_s": round(seconds, 2),
                      **({"cleared": cleared} if cleared is not None else {})}
            os.write(write, json.dumps(result).encode())
            code = 0
        except BaseException:  # the child never returns into the server's code
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    _, status = os.waitpid(pid, 0)
    if status:
        raise SystemExit(f"forked child failed: status {status}")
    print(data.decode())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="probe", choices=("probe", "child", "server"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--tag", default="fresh")
    ap.add_argument("--job-env", default="{}")
    ap.add_argument("--trainer-args", default="", help="run our trainer (python -m trainer ARGS) instead of the small "
                    "function: its graphs, user-defined Triton kernels included")
    ap.add_argument("--out", type=Path, help="write DIR/fork_cache_key_probe.json")
    ap.add_argument("--clear-caches", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode == "child":
        return child(args)
    if args.mode == "server":
        return server(args)
    args.work = Path(args.work or tempfile.mkdtemp(prefix="fork-cache-key-")).resolve()
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(args.work / "inductor"),
           "TRITON_CACHE_DIR": str(args.work / "triton"), "TORCHINDUCTOR_COMPILE_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                         if p])}
    runs = [run_fresh(args, env, "fresh")]
    for name in ("inductor", "triton"):  # what the first fresh run left, for the candidate fix to find
        if (args.work / name).is_dir():
            shutil.copytree(args.work / name, args.work / f"{name}-after-fresh", dirs_exist_ok=True)
    runs += [run_forked(args, env), run_fresh(args, env, "fresh-again")]
    cleared_env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(args.work / "inductor-after-fresh"),
                   "TRITON_CACHE_DIR": str(args.work / "triton-after-fresh")}
    runs.append(run_forked(args, cleared_env, clear=True))
    details = {r["tag"]: hash_details(r["details"]) for r in runs}
    missed = {r["tag"]: r["counters"].get("inductor.fxgraph_cache_miss", 0) for r in runs}
    # Inductor logs the details only where it computes a key for a miss: a run that missed nothing has none to
    # compare (its log may still hold other debug lines of the cache: those are no key's details)
    differ = {f"fresh vs {tag}": sorted(set(details["fresh"]) ^ set(details[tag])) if missed[tag] else "hit: none"
              for tag in ("forked", "fresh-again", "forked-cleared")}
    for r in runs:
        print(f"{r['tag']:14s} {r['counters']}")
    print("caches the forked-cleared child emptied:", ", ".join(runs[-1]["cleared"]) or "none")
    for name, lines in differ.items():
        print(f"{name}: " + (lines if isinstance(lines, str) else f"{len(lines)} hash-detail line(s) differ"))
        for line in lines[:40] if isinstance(lines, list) else []:
            print("   ", line[:300])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fork_cache_key_probe.json").write_text(json.dumps({"runs": runs, "differ": differ}, indent=1))


if __name__ == "__main__":
    main()
