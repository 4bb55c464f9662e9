"""The claims on a real database (SQLite file and PostgreSQL) and the policy: two claimants at the same moment never
both get a GPU (also when they cut the machine into GPU sets of different sizes), a dead controller's claims are given
again only once its job is gone (the local launcher asks the process), and the allocation's priority, fair share and
cap."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from db import Database, EventRow, SlotBlockRow, SlotClaimRow, StudyRow, TrialRow
from orchestrator.claims import FleetClaims, store
from orchestrator.claims.policy import Candidate, Contender, allocate, candidates_for
from orchestrator.claims.reaper import Reaper
from orchestrator.config.fleet import Fleet, Machine
from orchestrator.config.study import load_study_text
from orchestrator.launchers.base import MachineInfo, Slot
from orchestrator.launchers.local import LocalLauncher, process_start_time

STUDY = """
trainer: {command: ["{python}", "t.py"], log_format: orch}
parameters: {x: {type: float, low: 0, high: 1}}
objective: {minimize: train_time_s}
budget: {max_trials: 100}
resources: {gpus: GPUS}
"""


def _claims(db: Database, fleet: Fleet, study_id: int, owner: str, gpus: int) -> FleetClaims:
    spec, _ = load_study_text(STUDY.replace("GPUS", str(gpus)))
    claims = FleetClaims(db, fleet, study_id=study_id, study_name=f"s{study_id}", owner=owner, spec=spec,
                         launcher_for=lambda machine: LocalLauncher())
    claims.infos = {"box": MachineInfo(reachable=True, gpu_count=4, cpu_count=1)}
    return claims


def test_two_claimants_at_the_same_moment_never_share_a_gpu(db_url):
    """Rounds of two threads (two connections) claiming at one barrier: sets of 2 GPUs against sets of 1, overlapping
    on gpu1; each round exactly one gets gpu1 and nobody is left holding part of a set."""
    fleet = Fleet(machines=[Machine(name="box", launcher="local", gpus=4, cpu_slots=1)])
    dbs = [Database(db_url), Database(db_url)]
    first, second = _study(dbs[0], "a"), _study(dbs[0], "b")
    a = _claims(dbs[0], fleet, first, "host-a:1:1", gpus=2)
    b = _claims(dbs[1], fleet, second, "host-b:2:2", gpus=1)
    a.start(a.infos)
    b.start(b.infos)
    pair, single = Slot("box", 0, gpu_ids=(0, 1)), Slot("box", 1, gpu_ids=(1,))
    barrier = threading.Barrier(2)
    got: dict[str, list] = {"a": [], "b": []}

    def claim(name, claims, slot):
        barrier.wait()
        got[name].append(claims.take([slot]))

    for rounds in range(1, 201):  # at least 25, until each claimant has lost one (a real race, not a fixed order)
        if rounds > 25 and got["a"].count([]) and got["b"].count([]):
            break
        threads = [threading.Thread(target=claim, args=("a", a, pair)), threading.Thread(target=claim, args=("b", b, single))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        won = [name for name in "ab" if got[name][-1]]
        assert len(won) == 1, got
        held = _holders(dbs[0])
        assert held == ({"gpu0": "host-a:1:1", "gpu1": "host-a:1:1"} if won == ["a"] else {"gpu1": "host-b:2:2"})
        assert _free_mask(dbs[0]) == 0b1111 & ~(0b11 if won == ["a"] else 0b10)  # the block agrees with the claims
        (a if won == ["a"] else b).drop([pair if won == ["a"] else single])
    assert got["a"].count([]) and got["b"].count([])  # both won some rounds: a real race, not a fixed order
    for db in dbs:
        db.dispose()


def test_a_release_a_reaper_and_a_claimant_at_one_moment_keep_the_blocks_and_the_claims_in_step(db_url):
    """Rounds of three connections at one barrier: the holder releases its trial's slot, another controller's reaper
    frees the same claim (the holder's lease looked expired) and a third study claims an overlapping GPU. Whatever the
    order, the bits go back once: afterwards no two claims share a unit and each block's free mask is exactly its
    units minus the claimed ones (a second give-back would free a GPU the third study holds)."""
    fleet = Fleet(machines=[Machine(name="box", launcher="local", gpus=4, cpu_slots=1)])
    dbs = [Database(db_url) for _ in range(3)]
    holder = _claims(dbs[0], fleet, _study(dbs[0], "a"), "host-a:1:1", gpus=2)
    claimant = _claims(dbs[2], fleet, _study(dbs[0], "c"), "host-c:3:3", gpus=1)
    holder.start(holder.infos)
    claimant.start(claimant.infos)
    pair, single = Slot("box", 0, gpu_ids=(0, 1)), Slot("box", 1, gpu_ids=(1,))
    barrier = threading.Barrier(3)
    outcomes = {"released": 0, "reaped": 0, "claimed": 0}

    def release():
        barrier.wait()
        with dbs[0].session() as s:
            holder.release(s, _Writes(), 0)

    def reap(claims):
        barrier.wait()
        with dbs[1].session() as s:
            outcomes["reaped"] += store.give_back(s, claims, "host-a:1:1")

    def claim():
        barrier.wait()
        outcomes["claimed"] += len(claimant.take([single]))

    for _ in range(20):
        assert holder.take([pair]) == [pair]
        with dbs[0].session() as s:
            holder.assign(_Writes(s), pair, 0)
        claims = list(holder.held[pair])
        threads = [threading.Thread(target=release), threading.Thread(target=reap, args=(claims,)),
                   threading.Thread(target=claim)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        with dbs[0].session() as s:
            rows = s.scalars(select(SlotClaimRow)).all()
            block = s.scalars(select(SlotBlockRow).where(SlotBlockRow.kind == "gpu")).one()
        held = 0
        for row in rows:
            assert held & row.bits == 0, "two claims share a unit"
            held |= row.bits
        assert block.free == (1 << block.units) - 1 - held, (bin(block.free), bin(held))
        assert held in (0, 0b10) and len(rows) == (held != 0)  # the single GPU of c, or nothing (c came first)
        claimant.drop([single])
    assert outcomes["reaped"] and outcomes["reaped"] < 20  # the release and the reaper each came first at times
    for db in dbs:
        db.dispose()


class _Writes:
    """The controller's batch of statements, executed at once here (the test has no controller)."""

    def __init__(self, session=None):
        self.session = session

    def add(self, statement, params):
        if self.session is not None:
            self.session.execute(statement, params)


def test_a_gone_controllers_claim_waits_for_its_job_then_is_freed(db_url, tmp_path):
    """The holder's lease expired (its process lives on, e.g. cut off from the database): its claim is kept while the
    trial's process runs (asked through the local launcher by pid and start time), freed once it has ended, with an
    event; a claim with no trial is freed at once; a live holder's claim is left alone."""
    db = Database(db_url)
    fleet = Fleet(machines=[Machine(name="box", launcher="local", gpus=4, cpu_slots=1)])
    key = fleet.machines[0].claim_key
    job = subprocess.Popen(["sleep", "60"])
    stale = f"{socket.gethostname()}:{os.getpid()}:{process_start_time(os.getpid())}"  # alive, lease expired
    now = datetime.now(timezone.utc)
    try:
        study_id = _study(db, "gone")
        with db.session() as s:
            s.add(TrialRow(study_id=study_id, number=0, round=1, variant="v", params={}, state="running",
                           machine="box", slot="gpu:0", pid=job.pid, pid_start=process_start_time(job.pid),
                           controller=stale))
            block = SlotBlockRow(machine=key, kind="gpu", block=0, units=4, free=0b1000)
            s.add(block)
            s.flush()
            for unit, holder, number, expires in (("gpu0", stale, 0, now - timedelta(seconds=5)),
                                                  ("gpu1", stale, None, now - timedelta(seconds=5)),
                                                  ("gpu2", "elsewhere:9:9", 7, now + timedelta(seconds=60))):
                s.add(SlotClaimRow(block_id=block.id, bits=1 << int(unit[3:]), machine=key, units=unit,
                                   controller=holder, study_id=study_id, trial_number=number, slot=f"gpu:{unit[3:]}",
                                   claimed_at=now, lease_expires=expires))
        reaper = Reaper(db, fleet, "reaper-host:1:1", lambda machine: LocalLauncher(), 1.0, lambda message: None)
        assert reaper.gone() == [stale]
        assert reaper.reap_once() == 1  # the claim without a trial; gpu0's job still runs
        assert _holders(db) == {"gpu0": stale, "gpu2": "elsewhere:9:9"} and _free_mask(db) == 0b1010
        job.kill()
        job.wait()
        assert reaper.reap_once() == 1
        assert _holders(db) == {"gpu2": "elsewhere:9:9"} and _free_mask(db) == 0b1011
        with db.session() as s:
            freed = [e.message for e in s.scalars(select(EventRow).where(EventRow.kind == "claim.freed"))]
        assert len(freed) == 2 and any("trial gone#0's job no longer runs" in m for m in freed), freed
    finally:
        job.kill()
        db.dispose()


def _study(db: Database, name: str) -> int:
    with db.session() as s:
        row = StudyRow(name=name, optuna_study_name=name, spec={}, spec_yaml="", objective_metric="m",
                       direction="minimize")
        s.add(row)
        s.flush()
        return row.id


def _holders(db: Database) -> dict[str, str]:
    """unit -> the controller holding it (the claim rows)."""
    with db.session() as s:
        return {unit: r.controller for r in s.scalars(select(SlotClaimRow)) for unit in r.units.split(",")}


def _free_mask(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(SlotBlockRow.free).where(SlotBlockRow.kind == "gpu"))


def _machines(n: int, gpus: int = 8, per_trial: int = 8) -> tuple[dict, list]:
    free = {f"m{i}": {f"gpu{g}" for g in range(gpus)} for i in range(n)}
    sets = [(f"m{i}", [tuple(f"gpu{g}" for g in range(k * per_trial, (k + 1) * per_trial))
                       for k in range(gpus // per_trial)]) for i in range(n)]
    return free, sets


def test_allocation_priority_fair_share_and_burst():
    free, sets = _machines(8)
    cands = candidates_for(sets, free)
    # a burst of 8 free machines between 4 equal studies with equal shares: 2 each, not 8 to the first
    equal = [Contender(i, 0, 0.0, 100, 600.0, candidates=cands) for i in range(4)]
    assert sorted(len(v) for v in allocate(free, equal).values()) == [2, 2, 2, 2]
    # a higher priority takes what it wants first; the rest share what is left
    high = Contender(9, 1, 1e9, 3, 600.0, candidates=cands)
    given = allocate(free, [high, *equal[:2]])
    assert len(given[9]) == 3 and sorted(len(given[i]) for i in (0, 1)) == [2, 3]
    # the study holding less (a smaller share) is served first, one slot at a time
    given = allocate({"m0": free["m0"]}, [Contender(1, 0, 3 * 8 * 600.0, 5, 600.0, candidates=cands),
                                          Contender(2, 0, 2 * 8 * 600.0, 5, 600.0, candidates=cands)])
    assert [len(given[1]), len(given[2])] == [0, 1]
    # a study that fits nowhere (its labels, its set size) does not hold the slot back from the next one
    wide = Contender(3, 5, 0.0, 5, 600.0, candidates=[Candidate("m0", tuple(f"gpu{g}" for g in range(16)))])
    assert len(allocate(free, [wide, equal[0]])[0]) == 8


def test_the_offers_reads_wait_for_no_writer_on_sqlite(tmp_path):
    """The claims' reads (the offer, the queue view) run in `Database.read_session`: on SQLite a deferred
    transaction, answered while another process's connection holds the write lock (a BEGIN IMMEDIATE there would
    wait out the 30 s busy timeout) with the last committed state."""
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    writer, reader = Database(url), Database(url)
    try:
        with writer.session() as s:
            s.add(StudyRow(name="w", optuna_study_name="w", spec={}, spec_yaml="", objective_metric="m",
                           direction="minimize"))
            s.flush()  # the write lock is held from here to the commit
            t0 = time.monotonic()
            with reader.read_session() as r:
                assert r.scalar(select(StudyRow.name)) is None  # the committed state: the writer's row is not there
            assert time.monotonic() - t0 < 5.0
        with reader.read_session() as r:
            assert r.scalar(select(StudyRow.name)) == "w"
    finally:
        writer.dispose()
        reader.dispose()


def test_a_claim_whose_dispatch_transaction_rolls_back_is_not_held(db_url):
    """The claim is made in the controller's dispatch transaction: when that transaction fails (a database error
    while the trials are recorded), the block's bits and the claim row roll back with it, and the controller does
    not count the slot as its own (it is claimed again, once, at the next dispatch)."""
    fleet = Fleet(machines=[Machine(name="box", launcher="local", gpus=4, cpu_slots=1)])
    db = Database(db_url)
    claims = _claims(db, fleet, _study(db, "r"), "host-r:1:1", gpus=2)
    claims.start(claims.infos)
    pair = Slot("box", 0, gpu_ids=(0, 1))
    try:
        with db.session() as s:
            assert claims.take([pair], s) == [pair]
            claims.assign(_Writes(), pair, 0)
            assert claims.held_units() == 2
            raise RuntimeError("the dispatch failed")
    except RuntimeError:
        pass
    assert claims.held_units() == 0 and not claims.held and not claims.by_trial
    assert _holders(db) == {} and _free_mask(db) == 0b1111
    assert claims.take([pair]) == [pair] and claims.held_units() == 2 and _free_mask(db) == 0b1100
    db.dispose()
