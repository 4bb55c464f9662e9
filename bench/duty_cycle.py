"""Duty cycle of one machine, cold caches against warm: N consecutive trials of our trainer through `orch study run`.

Two studies of the same trainer command run one after the other on one machine (one slot), each of N trials:

- cold: every trial gets empty compile caches of its own (TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR set by the
  study to a folder in the trial's directory, which the warm-machine entry leaves as it is): a fresh container or
  node, every trial compiles from nothing;
- warm: the machine's caches (orchestrator/warm): the first trial compiles and fills them, the others find them;
- prime: one trial on the machine's caches with the flags and environment of the phase after it (warm, tuned or
  forked; warm's when none follows), so that the next phase, in this run or another device call on the same machine,
  starts warm: Inductor's cache key holds its settings (TORCHINDUCTOR_COMPILE_THREADS among them), so a prime run
  with other settings would leave the next phase's first trial compiling from nothing;
- tuned: the warm study (without `--warm-args`, flags only the prime and warm phases get) with `--tuned-args` added to the trainer's flags and `--tuned-env` to its environment (the
  same code, so the same cache key): a start-up change measured beside the plain warm trials, on the same machine
  in the same run;
- forked: the tuned study with `trainer.fork_server` (preload `--fork-preload`): each trial's trainer forked from the
  machine's fork server, which imported torch and its compiler once (orchestrator/warm/forkserver.py).

`--phases prime,warm:3,tuned:6` gives a phase its own trial count. Each trial's final `@@metrics` line says where
its time before the first timed step went (`startup_s`: process, import, device, data, model, optimizers, compile,
start_line, warmup, first_val); the second table has their means a phase.

Both stage the same data (the trainer's shards, with a sha256 manifest) once per machine through `trainer.data`.
The duty cycle is what `orch study status --json` reports (timed training over the machine's time, analysis/
duty_cycle.py); the warm study is also given without its first (cold) trial, as a machine that stays warm sees it.

    python bench/duty_cycle.py                                  # CPU: tiny preset, one stage, --compile 1, 6 + 6 trials
    python bench/duty_cycle.py --trials 6 --steps 200 --out DIR # DIR/duty_cycle.json and DIR/duty_cycle.md
    python bench/duty_cycle.py --preset gpt2 --device cuda --phases prime --steps 100 --work runs/duty-gpu
    python bench/duty_cycle.py --preset gpt2 --device cuda --phases warm --steps 100 --work runs/duty-gpu --out DIR
    python bench/duty_cycle.py --report --work runs/duty-gpu --phases prime,forked,tuned ...   # tables only

`--work DIR` keeps the workspace (the database, the machine's workdir with its `.orch-warm`): the same command run
again resumes the studies (`orch study run` resumes) with the caches as they were: `--phases prime` in one device
call, `--phases warm` in the next on the same machine. (A phase cut by a call's end and resumed in the next finishes,
but the time between the calls counts in its machine time.) Without `--data-dir` the tiny preset's byte-level shards are built here
(`python -m trainer.data stdlib-bytes`); with it, the train/val shards matched by `--train-files`/`--val-files`
there are the study's data. Nothing here needs a GPU unless `--device cuda`; `--compile 1` on CPU needs a C++
compiler (inductor builds its kernels with g++).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from db import Database, StudyRow, TrialRow  # noqa: E402
from orchestrator.analysis.duty_cycle import duty_from_trials  # noqa: E402
from orchestrator.config.study import ForkServer  # noqa: E402
from orchestrator.warm.plan import sha256_file  # noqa: E402
from orchestrator.warm.report import log_report  # noqa: E402
from sqlalchemy import select  # noqa: E402

#: one stage of one shape on CPU: one graph to compile (the tiny preset's three stages compile three, ~70 s cold)
ONE_STAGE = ["--stage-durations", "1", "--stage-seq-lens", "64", "--stage-batch-tokens", "256",
             "--stage-lr-mults", "1", "--stage-windows", "64"]


def orch(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    # the trials inherit PYTHONPATH: `-m trainer` imports from this checkout where it is not installed (a device)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *args], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": path})
    if check and result.returncode != 0:
        raise SystemExit(f"orch {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def build_data(work: Path, args) -> Path:
    """The shards' folder with a SHA256SUMS manifest of the train and val files the trainer reads."""
    if args.data_dir is None:
        source = work / "source"
        subprocess.run([sys.executable, "-m", "trainer.data", "stdlib-bytes", "--data-dir", str(source)], check=True,
                       capture_output=True, cwd=REPO)
        [folder] = source.glob("stdlib-bytes-*")
    else:
        folder = Path(args.data_dir).resolve()
    files = sorted(glob.glob(str(folder / args.train_files))) + sorted(glob.glob(str(folder / args.val_files)))
    if not files:
        raise SystemExit(f"no shards match {args.train_files} / {args.val_files} in {folder}")
    lines = [f"{sha256_file(f)}  {os.path.relpath(f, folder)}" for f in files]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return folder / "SHA256SUMS"


#: the phases on the machine's caches whose first trial may compile and whose later trials find the cache
WARM_PHASES = ("warm", "tuned", "forked")


def plan_phases(text: str, trials: int) -> list[tuple[str, int, str]]:
    """(phase, trials, the phase whose trainer flags and environment it takes) for `--phases`: a prime trial takes
    those of the next warm, tuned or forked phase (warm's if none follows), so that phase finds its key filled."""
    phases = [(p.partition(":")[0], p.partition(":")[2]) for p in text.split(",") if p]
    if (not {name for name, _ in phases} <= {"cold", "prime", "warm", "tuned", "forked"} or trials < 1
            or any(n and not (n.isdigit() and int(n) > 0) for _, n in phases)):
        raise SystemExit("--phases takes cold, prime, warm, tuned and forked (NAME or NAME:N), comma-separated; "
                         "--trials and each N at least 1")
    planned = []
    for i, (phase, count) in enumerate(phases):
        after = [p for p, _ in phases[i + 1:] if p in WARM_PHASES]
        like = (after[0] if after else "warm") if phase == "prime" else phase
        planned.append((phase, 1 if phase == "prime" else int(count or trials), like))  # prime: one trial
    return planned


def study_file(work: Path, phase: str, trials: int, manifest: Path, args, like: str = "") -> Path:
    """The phase's study file; `like` is the phase whose trainer flags and environment it takes (prime's: the next)."""
    like = like or phase
    command = ["{python}", "-m", "trainer", "--preset", args.preset, "--device", args.device, "--compile", args.compile,
               "--dataset", "shards", "--data-dir", "data", "--train-files", args.train_files,
               "--val-files", args.val_files, "--num-steps", str(args.steps), "--extension-steps", "0"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    command += (ONE_STAGE if args.one_stage else []) + shlex.split(args.trainer_args)
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    if phase == "cold":  # caches of the trial's own: each trial compiles from nothing
        env |= {"TORCHINDUCTOR_CACHE_DIR": "cold-cache/inductor", "TRITON_CACHE_DIR": "cold-cache/triton"}
    if like == "warm":
        command += shlex.split(args.warm_args)
    if like in ("tuned", "forked"):
        command += shlex.split(args.tuned_args)
        env |= dict(item.split("=", 1) for item in args.tuned_env.split(",") if item)
    spec = {
        "description": f"duty-cycle bench, {phase} caches",
        "trainer": {"command": command, "log_format": "orch", "env": env, "code_dir": str(REPO),
                    "files": ["trainer/*.py", "kernels/*.py"],
                    "data": {"manifest": str(manifest)}},
        "parameters": {"init_seed": {"type": "int", "low": 1, "high": 100000, "flag": "--seed"}},
        "objective": {"minimize": "train_time_s", "subject_to": ["val_loss <= 100"]},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"max_trials": trials, "parallel": 1},
        "timeout_s": args.timeout_s,
        "resources": {"gpus": 1 if args.device == "cuda" else 0},
    }
    if phase == "forked":  # the tuned trials, each forked from the machine's fork server (orchestrator/warm)
        spec["trainer"]["fork_server"] = {"preload": args.fork_preload.split(","), "idle_s": 900}
    path = work / f"{phase}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def fleet_file(work: Path, args) -> Path:
    machine = {"name": "bench", "launcher": "local", "workdir": str(work / "machine")}
    machine |= {"gpus": 1, "cpu_slots": 1} if args.device == "cuda" else {"gpus": "none", "cpu_slots": 1}
    path = work / "fleet.yaml"
    path.write_text(yaml.safe_dump({"machines": [machine]}, sort_keys=False))
    return path


def final_metrics(log_path: str | None) -> dict:
    """The trainer's final `@@metrics` object (its untimed compile warm-up `warmup_s` is not a trial column)."""
    final: dict = {}
    try:
        with open(log_path or "", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("@@metrics ") and '"final"' in line:
                    final = json.loads(line[len("@@metrics "):])
    except (OSError, ValueError):
        pass
    return final


def trial_rows(url: str, study: str) -> list[dict]:
    db = Database(url)
    try:
        with db.session() as s:
            rows = s.scalars(select(TrialRow).join(StudyRow, StudyRow.id == TrialRow.study_id)
                             .where(StudyRow.name == study).order_by(TrialRow.number)).all()
            out = []
            for r in rows:
                metrics = r.metrics or {}
                warm = log_report(r.log_path) or {}
                final = final_metrics(r.log_path)
                timed = metrics.get("train_time_ms")
                out.append({"number": r.number, "state": r.state, "machine": r.machine, "slot": r.slot,
                            "started_at": r.created_at, "ended_at": r.ended_at,
                            "timed_s": None if timed is None else timed / 1000,
                            "wall_s": (r.ended_at - r.created_at).total_seconds() if r.ended_at else None,
                            "warmup_s": final.get("warmup_s"), "startup_s": final.get("startup_s"),
                            "compile_cache": final.get("compile_cache"),
                            "cache_found": warm.get("found"), "fork": (warm.get("fork") or {}).get("state"),
                            "data": [d.get("state") for d in warm.get("data", [])]})
            return out
    finally:
        db.dispose()


def phase_result(url: str, phase: str) -> dict:
    status = json.loads(orch("study", "status", phase, "--json", "--db", url).stdout)
    rows = trial_rows(url, phase)
    result = {"phase": phase, "duty": status["duty_cycle"], "trials": [
        {k: v for k, v in r.items() if k not in ("started_at", "ended_at", "machine", "slot")} for r in rows]}
    if phase in WARM_PHASES and len(rows) > 1:  # the machine once warm: without the phase's first
        result["after_first"] = duty_from_trials(rows[1:]).to_json()  # trial (a first fork, a changed cache key)
    return result


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def table(results: list[dict]) -> list[str]:
    out = ["| caches | trials | timed training s | machine time s | mean trial wall s | mean warm-up s | in-trial | "
           "occupancy | duty cycle |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def row(name: str, duty: dict, trials: list[dict]) -> str:
        walls = [t["wall_s"] for t in trials if t["wall_s"] is not None]
        warmups = [t["warmup_s"] for t in trials if t["warmup_s"] is not None]
        mean = lambda xs: f"{sum(xs) / len(xs):.1f}" if xs else "-"  # noqa: E731
        return (f"| {name} | {len(trials)} | {duty['timed_s']:.1f} | {duty['machine_s']:.1f} | {mean(walls)} | "
                f"{mean(warmups)} | {pct(duty['in_trial'])} | {pct(duty['occupancy'])} | {pct(duty['duty_cycle'])} |")

    for r in results:
        out.append(row(r["phase"], r["duty"], r["trials"]))
        if "after_first" in r:
            out.append(row(f"{r['phase']}, trials 2..{len(r['trials'])}", r["after_first"], r["trials"][1:]))
    return out


STARTUP = ("process", "import", "device", "data", "model", "optimizers", "compile", "start_line", "warmup",
           "first_val")  # runs before the split of "model" (2026-12-06, third GPU session) have model only


def startup_table(results: list[dict]) -> list[str]:
    """Mean seconds of each start-up phase (the trainer's `startup_s`) a phase of the bench, and their sum."""
    out = ["| caches | " + " | ".join(STARTUP) + " | before step 0 | FX graph + AOTAutograd cache hit / miss | forked |",
           "| --- |" + " --- |" * (len(STARTUP) + 3)]
    for r in results:
        rows = [t["startup_s"] for t in r["trials"] if t.get("startup_s")]
        if not rows:
            continue
        means = [sum(row.get(k, 0.0) for row in rows) / len(rows) for k in STARTUP]
        counts = [t.get("compile_cache") or {} for t in r["trials"]]
        # the caches on disk (async_compile's counts are kernels met twice within one process)
        persistent = [(k, v) for c in counts for k, v in c.items() if k.startswith(("fxgraph_", "autograd_"))]
        hits = sum(v for k, v in persistent if k.endswith("_hit"))
        misses = sum(v for k, v in persistent if k.endswith("_miss"))
        forked = sum(t.get("fork") == "forked" for t in r["trials"])  # a server that refused: its trials ran fresh
        out.append(f"| {r['phase']} | " + " | ".join(f"{m:.2f}" for m in means) + f" | {sum(means):.2f} | "
                   f"{hits} / {misses} | {forked} of {len(r['trials'])} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=6, help="trials per phase (N >= 6 for the issue's figure)")
    ap.add_argument("--phases", default="cold,warm", help="cold, prime (one trial that fills the warm caches), warm, "
                    "tuned, forked; comma-separated, run in that order; NAME:N gives a phase N trials")
    ap.add_argument("--warm-args", default="", help="trainer flags added in the prime and warm phases")
    ap.add_argument("--tuned-args", default="", help="trainer flags added in the tuned phase (one shell-quoted string)")
    ap.add_argument("--tuned-env", default="", help="environment of the tuned phase's trials: KEY=VALUE,KEY=VALUE")
    ap.add_argument("--fork-preload", default=",".join(ForkServer().preload),
                    help="the forked phase's `trainer.fork_server.preload` (comma-separated modules)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", default="1", choices=["0", "1"])
    ap.add_argument("--steps", type=int, default=200, help="--num-steps of each trial")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on CPU)")
    ap.add_argument("--one-stage", type=int, default=None, help="one stage of one shape (default: 1 with tiny)")
    ap.add_argument("--trainer-args", default="", help="more trainer flags, as one shell-quoted string")
    ap.add_argument("--data-dir", default=None, help="shards to stage (default: build the tiny byte-level ones)")
    ap.add_argument("--train-files", default="*train*.bin")
    ap.add_argument("--val-files", default="*val*.bin")
    ap.add_argument("--timeout-s", type=int, default=1800, help="per-trial timeout")
    ap.add_argument("--work", type=Path, default=None, help="keep the workspace here (resumes when run again)")
    ap.add_argument("--out", type=Path, default=None, help="write duty_cycle.json and duty_cycle.md here")
    ap.add_argument("--report", action="store_true", help="only the tables of --work's database (its phases that "
                    "ran), e.g. of a device run copied back; runs nothing")
    args = ap.parse_args()
    args.threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    args.one_stage = bool(args.one_stage if args.one_stage is not None else args.preset == "tiny")
    phases = plan_phases(args.phases, args.trials)
    work = (args.work or Path(tempfile.mkdtemp(prefix="duty-cycle-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'orch.db'}"
    if args.report:
        results = [phase_result(url, phase) for phase, _, _ in phases
                   if orch("study", "status", phase, "--json", "--db", url, check=False).returncode == 0]
        return write_report(args, phases, results)
    manifest = build_data(work, args)
    fleet = fleet_file(work, args)
    results = []
    for phase, count, like in phases:
        spec = study_file(work, phase, count, manifest, args, like)
        if orch("study", "status", phase, "--json", "--db", url, check=False).returncode != 0:
            orch("study", "create", phase, "--from", str(spec), "--db", url)
        orch("study", "run", phase, "--plain", "--fleet", str(fleet), "--db", url)
        results.append(phase_result(url, phase))
        print("\n".join(table(results[-1:])[2:]), flush=True)
    return write_report(args, phases, results)


def write_report(args, phases, results) -> int:
    lines = table(results) + [""] + startup_table(results)
    setup = (f"phases {args.phases} ({args.trials} trials where no count is given), `python -m trainer --preset "
             f"{args.preset} --device {args.device} --compile {args.compile} --num-steps {args.steps}`"
             + (" (one stage)" if args.one_stage else "")
             + (f"; warm: `{args.warm_args}`" if args.warm_args else "")
             + (f"; tuned: `{args.tuned_args}` {args.tuned_env}" if any(p in ("tuned", "forked") for p, _, _ in phases)
                else "")
             + (f"; forked: preload {args.fork_preload}" if any(p == "forked" for p, _, _ in phases) else ""))
    text = "\n".join([setup, ""] + lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "duty_cycle.md").write_text(text)
        (args.out / "duty_cycle.json").write_text(json.dumps({"setup": setup, "results": results}, indent=1,
                                                             default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
