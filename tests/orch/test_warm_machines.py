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
from pathlib import Path

import yaml
from sqlalchemy import select

from db import Database, TrialRow
from orchestrator.cli.fleet_view import fleet_status, render_fleet_status
from orchestrator.cli.status import render_study_status, study_status
from orchestrator.config.fleet import load_fleet
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
    db.dispose()
