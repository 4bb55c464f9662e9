"""Warm machines (orchestrator/warm) and the duty cycle (analysis/duty_cycle.py) through real `orch` processes.

A study of the stand-in trainer (a real process that keeps an entry in TORCHINDUCTOR_CACHE_DIR, as a compile cache
does, and reads the study's data through the link in its trial directory) runs three trials on this machine: the
first creates the cache entry, the others find it; the data file is staged once and checked before each trial; a
data file whose checksum differs from the study's is refused at create; a staged copy that rotted is refused at the
next trial's start with its name. `orch study status` and `orch fleet status` report the duty cycle and the cache
and data state. The other launchers pass the same warm-machine contract (tests/fleet/test_launcher_contract.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from sqlalchemy import select

from db import Database, TrialRow
from orchestrator.cli.fleet_view import fleet_status, render_fleet_status
from orchestrator.cli.status import render_study_status, study_status
from orchestrator.analysis.duty_cycle import duty_from_trials
from orchestrator.config.fleet_file import load_fleet
from orchestrator.warm.launch import MARK
from orchestrator.warm.stage import ENTRY
from tests.conftest import STAND_IN, dump_database, orch


def _study(tmp_path: Path, name: str, sha: str, max_trials: int) -> Path:
    spec = {
        "trainer": {"command": ["{python}", str(STAND_IN), "--steps", "20", "--wall-s", "0.5", "--real-time",
                                "--cache-probe", "--read-data", "data/shard.bin"],
                    "log_format": "orch", "code_dir": str(STAND_IN.parent), "files": [STAND_IN.name],
                    "data": {"files": [{"path": "data/shard.bin", "sha256": sha}]}},
        "parameters": {"stage1": {"type": "float", "low": 0.2, "high": 0.6, "step": 0.02}},
        "derived": {"rest": {"expr": "(1 - stage1) / 2", "min": 0.05}},
        "arguments": {"flags": {"--stage-durations": "{stage1:.4f},{rest:.4f},{rest:.4f}"}},
        "objective": {"minimize": "train_time_s", "subject_to": ["val_loss <= 3.5"]},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"max_trials": max_trials, "parallel": 1}, "timeout_s": 60,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _probes(row: TrialRow) -> list[str]:
    return [line.split()[2] for line in Path(row.log_path).read_text().splitlines()
            if line.startswith("stand-in: cache ")]


def test_a_study_keeps_its_machine_warm_and_reports_the_duty_cycle(tmp_path):
    (tmp_path / "data").mkdir()
    shard = tmp_path / "data" / "shard.bin"
    shard.write_bytes(os.urandom(200_000))
    sha = hashlib.sha256(shard.read_bytes()).hexdigest()
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"machines": [{"name": "here", "launcher": "local", "gpus": "none",
                                                   "cpu_slots": 1, "workdir": str(tmp_path / "runs")}]}))
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    db_args = ["--db", url]
    assert orch("study", "create", "s1", "--from", str(_study(tmp_path, "s1.yaml", sha, 3)), *db_args).returncode == 0

    # a data file that is not what the study names: refused at create, naming the file, the field and the fix
    before = dump_database(url)
    bad = orch("study", "create", "bad", "--from", str(_study(tmp_path, "bad.yaml", "0" * 64, 1)), *db_args)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "bad.yaml" in bad.stderr and "trainer.data.files" in bad.stderr and str(shard) in bad.stderr
    assert f"has sha256 {sha}" in bad.stderr and "fix:" in bad.stderr
    assert dump_database(url) == before

    run = orch("study", "run", "s1", "--plain", "--fleet", str(fleet), *db_args)
    assert run.returncode == 0, run.stderr[-2000:]
    db = Database(url)
    with db.session() as s:
        rows = s.scalars(select(TrialRow).order_by(TrialRow.number)).all()
    assert [r.state for r in rows] == ["complete"] * 3
    assert [_probes(r) for r in rows] == [["created"], ["found"], ["found"]]  # the machine stayed warm
    store = tmp_path / "runs" / ".orch-warm" / "data"
    assert sorted(p.name for p in store.iterdir()) == [sha, f"{sha}.ok"]  # staged once, checked since
    assert "stand-in: data data/shard.bin 200000 " + sha in Path(rows[0].log_path).read_text()

    status = json.loads(orch("study", "status", "s1", "--json", *db_args).stdout)
    duty = status["duty_cycle"]
    [machine] = duty["machines"]
    assert (machine["machine"], machine["trials"], machine["lanes"]) == ("here", 3, 1)
    timed = sum(r.metrics["train_time_s"] for r in rows)
    span = (max(r.ended_at for r in rows) - min(r.created_at for r in rows)).total_seconds()
    assert abs(machine["timed_s"] - timed) < 0.01 and abs(machine["span_s"] - span) < 0.01
    assert abs(duty["duty_cycle"] - timed / span) < 1e-3 and 0 < duty["duty_cycle"] < machine["in_trial"] < 1
    assert "duty cycle: " in render_study_status(study_status(db, "s1"))

    view = fleet_status(db, load_fleet(fleet))
    warm = view["machines"][0]["warm"]
    assert warm["trial"] == "s1#2" and warm["found"] and warm["entries"] == 1
    assert warm["data"] == {"files": 1, "bytes": 200000, "states": {"checked": 1}}
    assert "here warm: cache " in render_fleet_status(view)
    md = orch("export", "s1", "--format", "md", *db_args)
    assert md.returncode == 0 and "## Duty cycle" in md.stdout
    assert f"{100 * duty['duty_cycle']:.1f} %" in md.stdout  # the same figure as the status

    # the staged copy rots (same size): the next trial is refused before its trainer starts, naming the file
    staged = store / sha
    blob = bytearray(staged.read_bytes())
    blob[-8:] = bytes(b ^ 0x55 for b in blob[-8:])
    staged.write_bytes(bytes(blob))
    assert orch("study", "create", "s2", "--from", str(_study(tmp_path, "s2.yaml", sha, 1)), *db_args).returncode == 0
    assert orch("study", "run", "s2", "--plain", "--fleet", str(fleet), *db_args).returncode == 0
    with db.session() as s:
        [refused] = s.scalars(select(TrialRow).join(TrialRow.study).where(TrialRow.study.has(name="s2"))).all()
    assert (refused.state, refused.exit_reason) == ("failed", "launch_error")
    assert str(staged) in refused.note and "sha256" in refused.note and "fix: remove it" in refused.note
    assert _probes(refused) == []
    after = fleet_status(db, load_fleet(fleet))["machines"][0]["warm"]
    assert after["trial"] == "s2#0" and after["ok"] is False and str(staged) in after["error"]

    # a data file gone from the controller's host since create: the run stops before its first trial, naming it
    assert orch("study", "create", "s3", "--from", str(_study(tmp_path, "s3.yaml", sha, 1)), *db_args).returncode == 0
    shard.rename(tmp_path / "elsewhere.bin")
    gone = orch("study", "run", "s3", "--plain", "--fleet", str(fleet), *db_args)
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    assert str(shard) in gone.stderr and "cannot be read" in gone.stderr and "fix:" in gone.stderr
    with db.session() as s:
        assert s.scalars(select(TrialRow).where(TrialRow.study.has(name="s3"))).all() == []
    db.dispose()


def _entry_key(tmp_path: Path, pythonpath: str | None, code: str = "c0") -> str:
    """The cache key the entry program computes for a plan, in a real interpreter whose sys.path starts with
    `pythonpath` (where a library's dist-info folder says its version)."""
    plan = tmp_path / f"plan-{code}.json"
    plan.write_text(json.dumps({"v": 1, "root": str(tmp_path / "warm"), "code": code, "link": "data", "keep": 8,
                                "data": []}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TORCHINDUCTOR_CACHE_DIR")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run([sys.executable, str(ENTRY), str(plan), "--", sys.executable, "-c",
                             "import os; print(os.environ['TORCHINDUCTOR_CACHE_DIR'])"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith(MARK))[len(MARK):])
    assert result.stdout.splitlines()[-1] == str(tmp_path / "warm" / "cache" / report["key"] / "inductor")
    return report["key"]


def test_another_library_version_or_another_code_gets_its_own_cache_key(tmp_path):
    """The key follows the libraries the job's interpreter would import: a torch of another version on its path
    (as after an upgrade, or in another container image) is another key; so is another code digest."""
    base = _entry_key(tmp_path, None)
    assert _entry_key(tmp_path, None) == base  # stable
    for version in ("9.9.9", "9.9.10"):
        fake = tmp_path / f"site-{version}"
        (fake / f"torch-{version}.dist-info").mkdir(parents=True)
        assert _entry_key(tmp_path, str(fake)) not in (base,)
    keys = {_entry_key(tmp_path, str(tmp_path / f"site-{v}")) for v in ("9.9.9", "9.9.10")}
    assert len(keys) == 2 and _entry_key(tmp_path, None, code="c1") != base


def test_duty_cycle_counts_each_lane_and_the_time_between_trials():
    """Two lanes of one machine: the time between trials and a lane idle at the end count against the machine;
    a trial without a training time counts 0 s of it; another machine is its own row."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    trials = [
        {"machine": "a", "slot": "gpu0", "started_at": at(0), "ended_at": at(100), "timed_s": 80.0},
        {"machine": "a", "slot": "gpu0", "started_at": at(110), "ended_at": at(200), "timed_s": 70.0},
        {"machine": "a", "slot": "gpu1", "started_at": at(0), "ended_at": at(150), "timed_s": None},
        {"machine": "b", "slot": "gpu0", "started_at": at(50), "ended_at": at(100), "timed_s": 40.0},
        {"machine": "b", "slot": "gpu0", "started_at": at(60), "ended_at": None, "timed_s": None},  # still running
    ]
    duty = duty_from_trials(trials)
    a, b = duty.machines
    assert (a.machine, a.trials, a.lanes, a.span_s, a.trial_s, a.timed_s, a.untimed) == ("a", 3, 2, 200, 340, 150, 1)
    assert a.duty == 150 / 400 and a.in_trial == 150 / 340 and a.occupancy == 340 / 400
    assert (b.trials, b.lanes, b.duty) == (1, 1, 40 / 50)
    assert duty.duty == (150 + 40) / (400 + 50)
    assert duty.to_json()["machines"][0]["duty_cycle"] == round(150 / 400, 4)
