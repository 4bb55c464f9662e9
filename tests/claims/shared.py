"""What the shared-fleet tests share: study files whose trainer is the stand-in wrapped in tests/helpers/slot_recorder.py
(every trial appends the GPUs it got and its start and end times to one file), controllers started as users start them,
and the checks on what the recorder saw: no GPU held by two trials at once, GPU-seconds per study in a window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.conftest import REPO, STAND_IN

RECORDER = REPO / "tests" / "helpers" / "slot_recorder.py"


def gpu_box(tmp_path: Path, gpus: int = 2) -> Path:
    """A fleet file of one local machine `box` with `gpus` GPUs (a stand-in count: the trainers are CPU stand-ins) and
    1 CPU slot."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"machines": [{"name": "box", "launcher": "local", "gpus": gpus, "cpu_slots": 1,
                                                   "workdir": str(tmp_path / "runs")}]}))
    return fleet


def study_file(tmp_path: Path, name: str, record: Path, *, trials: int, parallel: int, wall_s: float,
               priority: int = 0, gpus: int = 1, linger_s: float = 0.0, retries: int = 2,
               slow_while_missing: Path | None = None, hold_trial: int | None = None) -> Path:
    slow = ["--slow-while-missing", str(slow_while_missing)] if slow_while_missing else []
    slow += ["--hold-trial", str(hold_trial)] if hold_trial is not None else []
    spec = {
        "trainer": {"command": ["{python}", str(RECORDER), str(record), "--linger", str(linger_s), *slow, "--",
                                "{python}", str(STAND_IN), "--steps", "20", "--val-every", "5", "--wall-s", str(wall_s)],
                    "log_format": "orch"},
        "parameters": {"stage1": {"type": "float", "low": 0.2, "high": 0.6, "step": 0.02},
                       "stage2": {"type": "float", "low": 0.1, "high": 0.34, "step": 0.02}},
        "derived": {"stage3": {"expr": "1 - stage1 - stage2", "min": 0.05}},
        "arguments": {"flags": {"--stage-durations": "{stage1:.4f},{stage2:.4f},{stage3:.4f}", "--seed": "{seed}"}},
        "objective": {"minimize": "train_time_s", "subject_to": ["val_loss <= 3.3"]},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"max_trials": trials, "parallel": parallel, "dispatch": "continuous"},
        "timeout_s": 120, "retries": retries, "resources": {"gpus": gpus},
        "scheduling": {"priority": priority},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def start(db_url: str, cwd: Path, name: str, fleet: Path) -> subprocess.Popen:
    """`orch study run NAME` in its own process."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", "study", "run", name, "--db", db_url,
                             "--fleet", str(fleet), "--plain"], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


@dataclass
class Run:
    study: str
    trial: int
    machine: str
    gpus: tuple[int, ...]
    start: float
    end: float | None
    termed: bool


def runs(record: Path, machine_of: dict[str, str]) -> list[Run]:
    """Every job the recorder saw; `machine_of`: a path prefix of each machine's workdir -> the machine's name."""
    starts, ends, terms = {}, {}, set()
    for line in record.read_text().splitlines():
        event = json.loads(line)
        key = (event["dir"], event["pid"])
        if event["event"] == "start":
            starts[key] = event
        elif event["event"] == "end":
            ends[key] = event["time"]
        else:
            terms.add(key)
    out = []
    for key, event in starts.items():
        trial_dir = Path(event["dir"])
        machine = next(name for prefix, name in machine_of.items() if str(trial_dir).startswith(prefix))
        gpus = tuple(int(g) for g in event["gpus"].split(",") if g.strip())
        out.append(Run(trial_dir.parent.name, int(trial_dir.name.split("-")[1]), machine, gpus, event["time"],
                       ends.get(key), key in terms))
    return sorted(out, key=lambda r: r.start)


def overlaps(all_runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of jobs that held one GPU of one machine at the same time (a job with no end holds it to the last)."""
    by_gpu: dict[tuple[str, int], list[Run]] = {}
    for run in all_runs:
        for gpu in run.gpus:
            by_gpu.setdefault((run.machine, gpu), []).append(run)
    out = []
    for jobs in by_gpu.values():
        jobs.sort(key=lambda r: r.start)
        for prev, nxt in zip(jobs, jobs[1:]):
            if prev.end is None or nxt.start < prev.end:
                out.append((prev, nxt))
    return out


def gpu_seconds(all_runs: list[Run], study: str, begin: float, end: float,
                claimed: dict[tuple[str, int], float] | None = None) -> float:
    """`study`'s GPU-seconds within [begin, end]: each job from its start (or, given `claimed`, from when its trial
    claimed its GPUs: (study, trial) -> epoch seconds) to its end."""
    since = (lambda r: claimed[r.study, r.trial]) if claimed is not None else (lambda r: r.start)
    return sum(max(0.0, min(r.end or end, end) - max(since(r), begin)) * len(r.gpus)
               for r in all_runs if r.study == study)
