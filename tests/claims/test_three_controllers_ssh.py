"""Three `orch study run` processes, three studies, one fleet of two real sshd machines with 2 GPUs each (declared;
each trial's CUDA_VISIBLE_DEVICES and times are recorded by tests/helpers/slot_recorder.py), one real PostgreSQL.
Studies a and b (priority 0) share the fleet; c (priority 1) joins when it is full, gets the next two free GPUs and
keeps them until its trials are done although its share is then the largest (priority before fair share). Then a's
controller is SIGKILLed while its jobs run (its last trial's job runs until stopped, so one surely does; each takes
3.5 s to stop after SIGTERM): their GPUs are given again only
once the jobs ended; a run again re-runs its lost trials as recorded retries. Never two jobs on one GPU, every study
finishes, a and b within the fair-share bound (Jain's index of their GPU-seconds >= 0.95) while both ran."""

from __future__ import annotations

from datetime import timezone

import pytest
import yaml
from sqlalchemy import select

from db import Database, EventRow, FleetDemandRow, SlotBlockRow, SlotClaimRow, StudyRow, TrialRow
from orchestrator.claims.client import DEFER_S
from orchestrator.claims.policy import jain
from tests.conftest import orch, wait_for
from tests.orch._checks import assert_agrees_with_optuna

from .shared import gpu_seconds, overlaps, runs, start, study_file

LINGER_S = 3.5  # below the ssh wrapper's kill grace (5 s): a stopped job ends by itself and records its end
SLACK_S = 1.0  # a claim decided just before c's demand was written may land this long after it (a race, not a choice)


@pytest.mark.slow
@pytest.mark.postgres
def test_three_controllers_share_two_ssh_machines_on_postgres(ssh_machines, postgres_server, tmp_path):
    db_url = postgres_server.create_database()
    pair = ssh_machines[:2]
    workdirs = {m.name: tmp_path / f"w-{m.name}" for m in pair}
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"machines": [m.fleet_entry(workdirs[m.name], gpus=2) for m in pair]}))
    record = tmp_path / "record.jsonl"
    # a's last trial (13) runs until it is stopped: a has a job running whenever it is killed (a 1 s job seen running
    # may end by itself before the kill reaches it, and a may be done by the time c is)
    specs = {"a": dict(trials=14, parallel=4, hold_trial=13), "b": dict(trials=10, parallel=4), "c": dict(trials=4, parallel=2, priority=1)}
    for name, extra in specs.items():
        path = study_file(tmp_path, name, record, wall_s=1.0, linger_s=LINGER_S, **extra)
        assert orch("study", "create", name, "--from", str(path), "--db", db_url, cwd=tmp_path).returncode == 0
    db = Database(db_url)
    procs = {name: start(db_url, tmp_path, name, fleet) for name in ("a", "b")}
    outputs = {}
    try:
        wait_for(lambda: len(_running(db)) == 4, 60, "a and b to fill the fleet's 4 GPUs")
        procs["c"] = start(db_url, tmp_path, "c", fleet)
        outputs["c"] = procs["c"].communicate(timeout=120)[0]
        where = {str(path): name for name, path in workdirs.items()}
        wait_for(lambda: any(r.study == "a" and r.trial == 13 for r in runs(record, where)), 60,
                 "a's last trial to start (it runs until stopped)")
        procs["a"].kill()
        procs["a"].wait(timeout=10)
        outputs["b"] = procs["b"].communicate(timeout=180)[0]
        procs["a"] = start(db_url, tmp_path, "a", fleet)
        outputs["a"] = procs["a"].communicate(timeout=120)[0]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, proc in procs.items():
        assert proc.returncode == 0 and "Traceback" not in outputs[name], (name, outputs[name][-3000:])
    seen = runs(record, {str(path): name for name, path in workdirs.items()})
    assert overlaps(seen) == []  # never two jobs on one GPU, a's stopping jobs included
    assert len({(r.study, r.trial) for r in seen}) == len(seen)  # no trial ran twice
    for name, count in (("b", 10), ("c", 4)):
        assert sorted(r.state for r in assert_agrees_with_optuna(db, name)) == ["complete"] * count
    a_rows = assert_agrees_with_optuna(db, "a")
    lost = {r.number for r in a_rows if r.state == "lost"}
    assert lost and sorted(r.state for r in a_rows) == ["complete"] * 14 + ["lost"] * len(lost)
    assert {r.retry_of for r in a_rows if r.retry_of is not None} == lost  # re-run as recorded retries

    # c (priority 1) was served first and kept its two GPUs until its trials were done: from its first wait to its last
    # claim, no trial of a or b claimed a GPU that c was owed, i.e. when no more GPUs were free than c still wanted.
    # Read from the claims (trial rows) and the jobs' ends, not from how soon c's controller claimed: it starts one
    # dispatch's jobs before it looks again, and on a loaded machine an ssh start takes a second (c's second claim
    # once came 1.06 s after a GPU freed while c was starting its first job; a and b had left that GPU free). This
    # check found c losing the GPU of a trial that had just ended to b: c's row said it wanted nothing until c's next
    # decision (now a release writes the want with the freed slot, orchestrator/claims/client.py `release`). One
    # exception, by design: a slot the policy gives c that c leaves unclaimed for DEFER_S goes to whoever can use it
    # (c's controller may be busy starting jobs: beside other tests under xdist it once took over 2 s)
    waited = _events(db, "study.waiting", "waiting", "c")[0].at.replace(tzinfo=timezone.utc).timestamp()
    claimed, ended = _trial_times(db)
    c_last = max(claimed["c", n] for n in range(4))
    assert _owed_gpus_taken(seen, claimed, ended, waited + SLACK_S, c_last) == [], (waited, c_last)

    # a and b within the fair-share bound while both had trials to start (until the last claim of either, or a's kill).
    # Held from each trial's claim, not its job's start: what the policy hands out is the claim; the time from a claim
    # to its job's start (ssh, a Python start: up to seconds on a loaded 2-core machine, against 1 s jobs) would count
    # as a gap against whichever study claimed last before the window's end (CI once read 0.94 from that alone)
    ab = [r for r in seen if r.study in "ab"]
    killed_at = min(r.end for r in ab if r.study == "a" and r.termed) - LINGER_S
    both = (max(min(claimed[r.study, r.trial] for r in ab if r.study == s) for s in "ab"),
            min(killed_at, *(max(t for r in ab if r.study == s and (t := claimed[r.study, r.trial]) < killed_at)
                             for s in "ab")))
    used = [gpu_seconds(ab, s, *both, claimed=claimed) for s in "ab"]
    assert jain(used) >= 0.95, (used, both)

    # a's killed jobs kept their GPUs until they ended; then their claims were freed after a check through ssh
    termed = [r for r in seen if r.study == "a" and r.termed]
    assert termed and all(r.end is not None for r in termed)
    released = {e.trial_number: e for e in _events(db, "claim.freed", study="a")}
    assert {r.trial for r in termed} <= set(released), (released, termed)  # (and any claim whose job had not started)
    for run in termed:
        assert "job no longer runs" in released[run.trial].message
        assert released[run.trial].at.replace(tzinfo=timezone.utc).timestamp() >= run.end - 0.5
    with db.session() as s:
        assert s.scalar(select(SlotClaimRow)) is None  # nothing held
        assert all(b.free == (1 << b.units) - 1 for b in s.scalars(select(SlotBlockRow)))  # every unit free again
        assert s.scalar(select(FleetDemandRow)) is None


def _running(db: Database) -> list[tuple[str, int]]:
    with db.session() as s:
        return s.execute(select(StudyRow.name, TrialRow.number).join(StudyRow).where(TrialRow.state == "running")).all()


def _trial_times(db: Database) -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], float]]:
    """(study, trial number) -> when the trial claimed its GPUs (its row is made in the claim's transaction), and ->
    when its end was recorded (in the transaction that freed its GPUs), where it was."""
    def stamp(at):
        return at.replace(tzinfo=timezone.utc).timestamp()

    with db.session() as s:
        rows = s.execute(select(StudyRow.name, TrialRow.number, TrialRow.created_at, TrialRow.ended_at)
                         .join(StudyRow)).all()
    return ({(name, n): stamp(made) for name, n, made, _ in rows},
            {(name, n): stamp(end) for name, n, _, end in rows if end is not None})


def _owed_gpus_taken(seen: list, claimed: dict, ended: dict, begin: float, end: float, gpus: int = 4,
                     c_parallel: int = 2, c_trials: int = 4) -> list:
    """The jobs of a and b claimed in (begin, end] when, before the claim, no more GPUs were free than c wanted (at
    most `c_parallel` running, `c_trials` in all), unless the GPU had been free DEFER_S by then (the policy's
    deferral: counted from its last holder's recorded end, which commits with the release). A GPU counts as held
    from its trial's claim to that recorded end, as the policy saw it. (Held only to the job's end, as the log shows
    it, a GPU whose release was still to come counted as free and c as wanting it: on a loaded machine c's release
    once came after b's legal claim of another slot.)"""
    taken = []
    for run in seen:
        at = claimed[run.study, run.trial]
        if run.study == "c" or not begin < at <= end:
            continue
        before = [r for r in seen if r.machine == run.machine and set(r.gpus) & set(run.gpus)
                  and claimed[r.study, r.trial] < at]
        last = max(before, key=lambda r: claimed[r.study, r.trial], default=None)
        if last is not None and at - ended.get((last.study, last.trial), at) >= DEFER_S:
            continue
        held = [r for r in seen if claimed[r.study, r.trial] < at and _held_at(r, ended, at)]
        c_held = sum(r.study == "c" for r in held)
        c_started = sum(r.study == "c" and claimed["c", r.trial] < at for r in seen)
        c_wants = min(c_parallel - c_held, c_trials - c_started)
        if gpus - len(held) - 1 < c_wants:
            taken.append((run, {"free": gpus - len(held), "c_wants": c_wants}))
    return taken


def _held_at(run, ended: dict, at: float) -> bool:
    """Whether the run's GPU was still held at ``at``: until its recorded release (its trial's end), else its job's."""
    released = ended.get((run.study, run.trial), run.end)
    return released is None or released > at


def _events(db: Database, kind: str, new: str | None = None, study: str | None = None) -> list:
    with db.session() as s:
        query = select(EventRow).where(EventRow.kind == kind).order_by(EventRow.at)
        if new is not None:
            query = query.where(EventRow.new == new)
        if study is not None:
            query = query.join(StudyRow, StudyRow.id == EventRow.study_id).where(StudyRow.name == study)
        return list(s.scalars(query))
