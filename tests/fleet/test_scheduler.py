"""The scheduler: slots by labels and GPU count, one trial per GPU set, slots for a machine that answers late, and
CPU slots counted on the machine itself. The unit tests use hand-made probe results; the study test runs real
processes through the real controller and local launcher on a machine that declares 4 GPUs (there is no GPU here:
the "GPUs" are only CUDA_VISIBLE_DEVICES values, which is all the scheduler hands out)."""

from __future__ import annotations

import os

import pytest
import yaml
from sqlalchemy import select

from db import Database, TrialRow
from orchestrator.config.fleet import Fleet, Machine
from orchestrator.run.controller import Controller
from orchestrator.launchers.base import MachineInfo
from orchestrator.fleet.scheduler import NoCapacity, Scheduler
from orchestrator.study.lifecycle import create_study
from tests.conftest import stand_in_study


def _fleet(*machines: Machine) -> Fleet:
    return Fleet(machines=list(machines), source="fleet.yaml")


def _gpus(n: int) -> MachineInfo:
    return MachineInfo(reachable=True, gpu_count=n, gpu_type="H100")


def test_gpu_sets_are_disjoint_and_whole_machine_when_asked():
    fleet = _fleet(Machine(name="big", gpus=8), Machine(name="small", gpus=2))
    infos = {"big": _gpus(8), "small": _gpus(2)}
    three = Scheduler(fleet, 3).plan(infos)
    assert [(s.machine, s.gpu_ids) for s in three] == [("big", (0, 1, 2)), ("big", (3, 4, 5))]  # 2 GPUs left idle
    whole = Scheduler(fleet, 8).plan(infos)
    assert [(s.machine, s.gpu_ids) for s in whole] == [("big", tuple(range(8)))]
    ones = Scheduler(fleet, 1).plan(infos)
    for machine in ("big", "small"):
        ids = [g for s in ones if s.machine == machine for g in s.gpu_ids]
        assert len(ids) == len(set(ids)) == infos[machine].gpu_count  # every GPU in exactly one set
    with pytest.raises(NoCapacity, match="asks 9 GPU"):
        Scheduler(fleet, 9).plan(infos)


def test_labels_busy_and_unavailable_slots():
    fleet = _fleet(Machine(name="a", gpus=2, labels={"pool": "x"}), Machine(name="b", gpus=2, labels={"pool": "y"}),
                   Machine(name="c", gpus=2, labels={"pool": "x"}))
    scheduler = Scheduler(fleet, 1, labels={"pool": "x"})
    slots = scheduler.plan({n: _gpus(2) for n in "abc"})
    assert {s.machine for s in slots} == {"a", "c"}
    free = scheduler.free(set())
    assert [s.machine for s in free] == ["a", "c", "a", "c"]  # interleaved: a round spreads over the fleet
    assert scheduler.free({free[0], free[1]}) == free[2:]
    scheduler.unavailable = {"a"}
    assert {s.machine for s in scheduler.free(set())} == {"c"}
    with pytest.raises(NoCapacity, match="labels"):
        Scheduler(fleet, 1, labels={"pool": "z"}).plan({n: _gpus(2) for n in "abc"})


def test_a_machine_unreachable_at_plan_gets_its_slots_when_it_answers():
    fleet = _fleet(Machine(name="up", gpus="none", cpu_slots=1), Machine(name="late", gpus="none", cpu_slots=2))
    scheduler = Scheduler(fleet, 0)
    scheduler.plan({"up": MachineInfo(reachable=True), "late": MachineInfo(reachable=False, error="timed out")})
    assert [s.machine for s in scheduler.slots] == ["up"]
    scheduler.refresh("late", MachineInfo(reachable=True))
    assert sorted((s.machine, s.index) for s in scheduler.free(set())) == [("late", 0), ("late", 1), ("up", 0)]
    scheduler.refresh("late", MachineInfo(reachable=False))
    assert [s.machine for s in scheduler.slots] == ["up"]


def test_cpu_slots_auto_count_the_remote_machines_cores():
    remote = Machine(name="r", launcher="ssh", host="10.0.0.9", known_hosts="/dev/null", gpus="none")
    slots = Scheduler(_fleet(remote), 0).plan({"r": MachineInfo(reachable=True, cpu_count=5)})
    assert len(slots) == 5 and all(s.cpu_ids == () for s in slots)  # the controller's cores mean nothing there
    fixed = remote.model_copy(update={"cpu_slots": 2})
    assert len(Scheduler(_fleet(fixed), 0).plan({"r": MachineInfo(reachable=True, cpu_count=5)})) == 2
    local = Machine(name="l", gpus="none")
    own = len(os.sched_getaffinity(0))
    slots = Scheduler(_fleet(local), 0).plan({"l": MachineInfo(reachable=True, cpu_count=own)})
    assert len(slots) == own and sorted(c for s in slots for c in s.cpu_ids) == sorted(os.sched_getaffinity(0))


def test_study_never_runs_two_trials_on_one_gpu_set(tmp_path, monkeypatch):
    """Declared GPUs only (no GPU here): 2 machines x 4 GPUs, 2 GPUs a trial: 4 sets, 8 trials, continuous dispatch."""
    monkeypatch.chdir(tmp_path)
    fleet = _fleet(Machine(name="g1", gpus=4, gpu_type="H100 (declared)", labels={"kind": "gpu"}),
                   Machine(name="g2", gpus=4, gpu_type="H100 (declared)", labels={"kind": "gpu"}),
                   Machine(name="cpu", gpus="none", cpu_slots=2))
    study = stand_in_study(tmp_path, max_trials=8, parallel=None, dispatch="continuous",
                           extra_args=["--wall-s", "0.6"])
    spec = yaml.safe_load(study.read_text())
    spec["budget"].pop("parallel")
    spec["resources"] = {"gpus": 2, "labels": {"kind": "gpu"}}
    study.write_text(yaml.safe_dump(spec, sort_keys=False))
    db = Database(f"sqlite:///{tmp_path / 'orch.db'}")
    create_study(db, "s", study)
    Controller(db, "s", fleet, heartbeat_s=0.5).run()
    with db.session() as s:
        rows = s.scalars(select(TrialRow).order_by(TrialRow.number)).all()
    assert [r.state for r in rows] == ["complete"] * 8
    assert {r.machine for r in rows} == {"g1", "g2"}  # the labels keep trials off the CPU machine
    assert {r.slot for r in rows} == {"gpu:0,1", "gpu:2,3"} and all(r.gpu_count == 2 for r in rows)
    overlapping = 0
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a.machine == b.machine and a.started_at < b.ended_at and b.started_at < a.ended_at:
                overlapping += 1
                assert a.slot != b.slot, f"trials {a.number} and {b.number} shared {a.machine} {a.slot}"
    assert overlapping > 0  # the check above had something to check: sets of one machine did run side by side
