"""The controller (`orch study run`): ask the sampler, fill free slots, stream logs into the database, tell
Optuna each outcome, until the budget is spent. It can be killed at any moment: `recovery` reconciles the
database on the next start, so no outcome is lost and no trial runs twice without being recorded as a retry.

Crash-safe order of a dispatch: Optuna `ask` with our row `pending` (one transaction) -> start the job -> our row
`running`. A finish: our row `complete`/`failed` with Optuna's `tell` (one transaction). The study's Optuna trials
are kept in memory under the lease (`study_storage`), and each step above is one transaction for every trial
that reaches it in a pass of the loop, so the cost per trial stays small on a large fleet.
"""

from __future__ import annotations

import errno
import queue
import signal
import threading
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from db import Database, EventRow, MachineRow, MetricPointRow, StudyRow, TrialRow
from db.new_rows import NewRows
from db.write_batch import WriteBatch

from . import control, lease
from .claims import FleetClaims
from .config.errors import ConfigError, OrchError
from .config.fleet import Fleet, Machine
from .health import HealthChecker
from .jobs import InvalidParams, apply_injection, build_job, resolve_values, variant_key
from .launchers import get_launcher
from .launchers.base import Event, ExitEvent, JobHandle, JobRecord, Launcher, LineEvent, MachineInfo, Slot
from .launchers.local import DISK_FULL
from .liveness.machines import MachineKeeper
from .liveness.watchdog import ProgressWatchdog
from .outcomes import ATTR_EXIT_REASON, curve_value, decide, tell
from .preflight import check_fleet_fits
from .parsers import LogStream, MetricPoint, get_adapter
from .provenance import code_info
from .recovery import enqueue_retry, recover
from .samplers import DecidingSampler, build_sampler, distributions
from .scheduler import NoCapacity, Scheduler
from .studies import OpenStudy, open_study, optuna_study_ids
from .study_storage import LeasedStorage, on_step
from .trial_queue import is_search_trial, next_trial, waiting_trials

# statements built once and bound per trial (SQLAlchemy caches their compiled form)
_TRIALS, _POINTS, _EVENTS = TrialRow.__table__, MetricPointRow.__table__, EventRow.__table__
_UPDATE_TRIAL_ROW = update(_TRIALS).where(_TRIALS.c.id == bindparam("id_")).values(
    gpu_model=func.coalesce(_TRIALS.c.gpu_model, bindparam("gpu_", type_=_TRIALS.c.gpu_model.type)))
_UPDATE_POINT = update(_POINTS).where(_POINTS.c.trial_id == bindparam("id_"), _POINTS.c.kind == bindparam("kind_"),
                                      _POINTS.c.step == bindparam("step_"))
_UPDATE_RUNNING = update(_TRIALS).where(_TRIALS.c.id == bindparam("id_"))
_INSERT_POINTS, _INSERT_EVENTS = insert(_POINTS).inline(), insert(_EVENTS).inline()  # no ids read back
_STUDIES = StudyRow.__table__
_UPDATE_ROUNDS = update(_STUDIES).where(_STUDIES.c.id == bindparam("id_"))
POINTS_FLUSH_S = 0.25  # metric points reach the database at most this long after their line
#: a drain (`orch fleet drain`) or a machine marked down by another process applies to this controller's dispatch
#: decisions at most this long after it commits (machine states this controller writes apply at once)
MACHINE_STATE_READ_S = 0.25
HEARTBEAT_S = 5.0
HEALTH_CHECK_S = 30.0  # how often machines marked down are probed again
#: states that count against the budget (lost and invalid trials do not: they are re-run or skipped)
COUNTED_STATES = ("pending", "running", "complete", "failed")
MAX_INVALID_IN_A_ROW = 50
EVENT_QUEUE_MAX = 256  # launcher events waiting for the controller (each line is at most 1 MiB)


@dataclass
class Running:
    number: int
    row_id: int
    trial_id: int
    slot: Slot
    handle: JobHandle
    stream: LogStream
    deadline: float
    started: float
    timed_out: bool = False
    cancelled: str | None = None  # `orch trial cancel`: why (its job is being killed)
    hung: bool = False  # killed by the progress watchdog
    last_val: float | None = None
    last_step: int | None = None
    step: int | None = None  # the latest step any metric line reported, of `total_steps` (the live view's progress)
    total_steps: int | None = None
    first_point: tuple[int, float] | None = None  # (step, monotonic time) of the first one: the rate for an ETA
    pending_points: list[MetricPoint] = field(default_factory=list)
    stored_points: set[tuple[str, int]] = field(default_factory=set)


@dataclass
class Prepared:
    """A trial asked for a slot and recorded `pending`, not started yet."""

    slot: Slot
    number: int
    trial_id: int
    row_id: int
    job: object
    machine: Machine
    workdir: Path
    values: dict


@dataclass
class Progress:
    """What a display shows; the controller updates it and calls the reporter."""

    study: str
    max_trials: int
    done: int = 0
    failed: int = 0
    running: dict[int, Running] = field(default_factory=dict)
    queued: int = 0
    round: int = 0
    best_value: float | None = None
    best_number: int | None = None
    message: str = ""
    refusals: list[str] = field(default_factory=list)  # why machines get no trials now, one line each


class StopRequested(Exception):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Controller:
    def __init__(self, db: Database, name: str, fleet: Fleet, *, reporter: Callable[[Progress, str], None] | None = None,
                 launchers: dict[str, Launcher] | None = None, heartbeat_s: float = HEARTBEAT_S,
                 max_new_trials: int | None = None, health_check_s: float = HEALTH_CHECK_S) -> None:
        self.db, self.name, self.fleet = db, name, fleet
        self.reporter = reporter or (lambda progress, message: None)
        self.launchers = launchers or {}
        self.heartbeat_s = heartbeat_s
        self.max_new_trials = max_new_trials  # stop after dispatching this many (tests, `--max-new`)
        # bounded: a job printing faster than the controller parses is slowed down, not buffered in memory
        self.events: "queue.Queue[Event]" = queue.Queue(maxsize=EVENT_QUEUE_MAX)
        self._fatal: OrchError | None = None  # stops the study after the current batch (e.g. a full disk)
        self.running: dict[int, Running] = {}
        self.owner = lease.controller_id()
        self._stop = threading.Event()
        self._stop_reason = ""
        self._stop_clean = False  # `orch study stop --now`: the run ends normally once its trials are killed
        self._optuna_gone = False  # the study was deleted from Optuna's tables while it ran: nothing more is written
        self._finishing: str | None = None  # `orch study stop`: why no new trial starts (the run ends after them)
        self._next_request_read = 0.0  # when `orch_requests` is read again (control.READ_S)
        self._stop_requests: list[int] = []  # closed as the run ends
        self._cancel_requests: dict[int, list[int]] = {}  # trial number -> requests closed when it has ended
        self.dispatched = 0
        self._last_invalid = ""
        self._next_health_check = 0.0
        self._progress_read = False  # see _refresh_progress
        self._counted: int | None = None  # see _budget_counts
        self._counted_here: set[int] = set()  # trial numbers this run recorded that count against the budget
        self.health_check_s = health_check_s
        self._health = HealthChecker(lambda machine: self._launcher(machine).probe(machine))
        self._drained: set[str] = set()  # machines seen drained (`orch fleet drain`), to report changes once
        self._machine_states: tuple[float, set[str]] | None = None  # (when read, unavailable machines)
        self._machine_rows: dict[str, tuple[str, str | None, bool]] = {}  # their (state, note, drain), same read
        self.keeper: MachineKeeper | None = None  # health checks, busy GPUs, refusals (set up in `run`)
        self.claims: FleetClaims | None = None  # the fleet's slots shared with other studies (set up in `run`)
        self.watchdog = ProgressWatchdog(None)
        self.round: int | None = None  # the study's round counter, read once under the lease (`_new_round`)
        self._new_trial_rows = NewRows(_TRIALS, db.engine.dialect.name)
        self._session = None  # the open transaction of `_unit`
        self._writes = WriteBatch()  # its writes (ours and Optuna's), one executemany per kind as it commits
        self._points_due: float | None = None  # when the metric points waiting in `running` must be written
        self._row_states: dict[int, tuple[str, str]] = {}  # row id -> (state, machine) of the trials this run started

    # ---- setup ---------------------------------------------------------------------------------------
    def _launcher(self, machine: Machine) -> Launcher:
        if machine.launcher not in self.launchers:
            self.launchers[machine.launcher] = get_launcher(machine.launcher)
        return self.launchers[machine.launcher]

    def _open(self) -> OpenStudy:
        opened = open_study(self.db, self.name, leased=True)
        history = len(opened.optuna.get_trials(deepcopy=False))
        opened.optuna.sampler = build_sampler(opened.spec, history)
        return opened

    def _probe_fleet(self) -> dict[str, MachineInfo]:
        """Probe every machine at once (an unreachable one costs a connect timeout, not one per machine)."""
        machines = self.fleet.machines
        launchers = [self._launcher(machine) for machine in machines]  # made here: the probes run in threads
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(machines))), thread_name_prefix="probe") as pool:
            infos = dict(zip([m.name for m in machines], pool.map(lambda pair: pair[0].probe(pair[1]),
                                                                  zip(launchers, machines))))
        for machine in machines:
            self._record_machine(machine, infos[machine.name])
        return infos

    def _record_machine(self, machine: Machine, info: MachineInfo) -> None:
        self._machine_states = None  # read again at the next dispatch decision
        try:
            self._record_machine_row(machine, info)
        except IntegrityError:  # another controller of the fleet added the machine's row first (PostgreSQL): update it
            self._record_machine_row(machine, info)

    def _record_machine_row(self, machine: Machine, info: MachineInfo) -> None:
        with self.db.session() as s:
            row = s.scalar(select(MachineRow).where(MachineRow.name == machine.name))
            state = "idle" if info.reachable else "down"
            if info.reachable and row is not None and row.state == "sick":
                state = "sick"  # only passing a health check clears it (liveness/machines.py)
            if row is None:
                row = MachineRow(name=machine.name, host=machine.host, launcher=machine.launcher, state=state)
                s.add(row)
            elif row.state != state and row.state != "draining":
                s.add(EventRow(machine=machine.name, kind="machine.state", old=row.state, new=state, message=info.error))
                row.state = state
            row.host, row.launcher = machine.host, machine.launcher
            row.gpu_count, row.gpu_type, row.driver_version = info.gpu_count, info.gpu_type, info.driver_version
            row.labels = dict(machine.labels)
            row.last_seen = _now() if info.reachable else row.last_seen
            if state != "sick":
                row.note = None if info.reachable else info.error

    # ---- main loop -----------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self._stop.set()
        try:
            self.events.put_nowait(ExitEvent(-1, None, "wake"))
        except queue.Full:  # the loop is awake anyway
            pass

    def run(self) -> Progress:
        opened = self._open()
        self.study, self.spec = opened, opened.spec
        self.adapter = get_adapter(self.spec.trainer.log_format)
        self.dists = distributions(self.spec)
        sid = opened.row.id
        check_fleet_fits(self.fleet, self.spec)  # a study no machine could ever run: refused before any write
        lease.acquire(self.db, sid, self.owner)
        if isinstance(opened.optuna._storage, LeasedStorage):
            opened.optuna._storage.reload()  # read under the lease: nobody else writes the trials now
        self.progress = Progress(study=self.name, max_trials=self.spec.budget.max_trials)
        self.watchdog = ProgressWatchdog(self.spec.stall_s)
        self.keeper = MachineKeeper(self.db, self.fleet, self._launcher, study_id=sid,
                                    gpus_per_trial=self.spec.resources.gpus, labels=self.spec.resources.labels,
                                    say=self._say, wake=self._wake)
        self.claims = FleetClaims(self.db, self.fleet, study_id=sid, study_name=self.name, owner=self.owner,
                                  spec=self.spec, launcher_for=self._launcher, heartbeat_s=self.heartbeat_s,
                                  say=self._say)
        try:
            adopted: list[tuple[TrialRow, JobHandle]] = []
            recover(self.db, opened, self.spec, self.adapter, report=lambda m: self._say(m),
                    reattach=lambda row: self._reattach(row, adopted))
            self.scheduler = Scheduler(self.fleet, self.spec.resources.gpus, self.spec.resources.labels)
            self.infos = self._probe_fleet()
            self.scheduler.unavailable = self._unavailable_machines()
            self._update_refusals()  # before the plan: a study no machine can take names each machine's reason
            self.scheduler.plan(self.infos)
            self.claims.start(self.infos)
            self._adopt(adopted)
            for machine in self.fleet.machines:
                if self.infos[machine.name].reachable:
                    self.keeper.admit(machine, self.infos[machine.name])
            spec_dir = Path(opened.row.spec_dir or ".")
            self.code = code_info((spec_dir / self.spec.trainer.code_dir).resolve(), self.spec.trainer.files)
            self._set_status("running")
            self._loop()
        except StopRequested:
            self._stopped_by(None)
            if not self._stop_clean:
                raise
            self.progress.message = self._stop_reason
        except Exception as exc:
            if not isinstance(exc, OrchError) and self._deleted_in_optuna():  # e.g. a write to its rows failed
                error = self._optuna_deleted_error()
                self._stopped_by(error)
                raise error from None
            self._stopped_by(exc)
            raise
        finally:
            self._shutdown()
            self._close_requests()
            self._close_claims()
            lease.release(self.db, sid, self.owner)
        return self.progress

    def _loop(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_s
        invalid_in_a_row = 0
        changed = True  # a trial ended or started, or the fleet changed: budget and free slots need a new look
        while True:
            if self._fatal is not None:
                raise self._fatal
            if self._stop.is_set():
                raise StopRequested(self._stop_reason)
            if changed:
                # database counts and the sampler's convergence test are read here, not once per log line
                changed = False
                self._refresh_progress()
                slots_wanted = self._slots_to_fill() if self._finishing is None else 0  # `orch study stop`
                if slots_wanted == 0 and not self.running:
                    self._finish_study()
                    return
                self.scheduler.unavailable = self._unavailable_machines()  # `orch fleet drain` from any process
                round_open = self.spec.budget.dispatch == "rounds" and self.running
                free = [] if round_open else self._free_slots(slots_wanted)
                if round_open:
                    self.claims.idle()
                waiting = self.claims.waiting is not None  # for slots other studies hold: a state, not a failure
                if not free and not self.running and not self.keeper.pending() and not waiting:
                    self._recheck_down_machines(force=True)
                    free = self._free_slots(slots_wanted)
                    if not free and not self.keeper.pending():
                        self._update_refusals()
                        raise NoCapacity(self.keeper.no_capacity_message())
                self._update_refusals()
                if free:
                    for ok in self._dispatch(free):
                        if ok:
                            invalid_in_a_row = 0
                        else:
                            invalid_in_a_row += 1
                            if invalid_in_a_row >= MAX_INVALID_IN_A_ROW:
                                raise OrchError(f"{MAX_INVALID_IN_A_ROW} sampled points in a row could not make a "
                                                f"valid job (last: {self._last_invalid}) (fix: narrow the parameter "
                                                "ranges or correct the injection settings in the study)")
                    changed = True
                    continue
            else:
                self.reporter(self.progress, "")  # the running trials' latest steps and losses
            due = [next_beat, self._next_request_read] + [r.deadline for r in self.running.values()]
            stall = self.watchdog.next_deadline()
            for extra in (self._points_due, stall, self.claims.next_poll()):
                if extra is not None:
                    due.append(extra)
            timeout = max(0.0, min(due) - time.monotonic())
            changed = self._drain(timeout)
            changed = self._read_requests() or changed  # `orch study stop`, `orch trial cancel`
            changed = self.keeper.collect() or changed
            now = time.monotonic()
            poll = self.claims.next_poll()
            changed = changed or (poll is not None and now >= poll)  # a waiting study looks at the fleet again
            for run in list(self.running.values()):
                if now >= run.deadline and not run.timed_out and not run.hung:
                    run.timed_out = True
                    run.handle.cancel("timeout")
                    self._event(run.number, "trial.timeout", None, None, f"timeout after {self.spec.timeout_s:g} s")
            for number in self.watchdog.stalled():
                self._stalled(self.running.get(number))
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + self.heartbeat_s
                changed = True

    # ---- jobs that outlived their controller ---------------------------------------------------------------
    def _reattach(self, row: TrialRow, adopted: list) -> JobHandle | None:
        """Recovery asks: the job of an unfinished trial row, found again by its launcher (`Launcher.reattach`)."""
        try:
            machine = self.fleet.machine(row.machine)
        except KeyError:
            if row.job_ref:
                self._say(f"recovery: trial {row.number} ran on machine {row.machine!r}, which is not in the fleet file "
                          f"now: its job {row.job_ref} cannot be followed or stopped from here")
            return None
        record = JobRecord(study=self.name, trial=row.number, machine=row.machine, slot=row.slot,
                           workdir=Path(row.workdir or "."), log_path=Path(row.log_path or "train.log"), pid=row.pid,
                           pid_start=row.pid_start, job_ref=row.job_ref, controller=row.controller,
                           started_at=row.started_at)
        handle = self._launcher(machine).reattach(record, machine, self.events)
        if handle is not None:
            adopted.append((row, handle))
        return handle

    def _adopt(self, adopted: list[tuple[TrialRow, JobHandle]]) -> None:
        """Follow the re-attached jobs as this controller's own: their slots are busy, their deadlines and metric points
        go on from what was recorded, and their rows name this controller (one transaction)."""
        if not adopted:
            return
        now_wall, now = _now(), time.monotonic()
        frozen = {t.number: t for t in self.study.optuna.get_trials(deepcopy=False)}
        with self._unit() as s:
            for row, handle in adopted:
                started_at = row.started_at
                if started_at is not None and started_at.tzinfo is None:
                    started_at = started_at.replace(tzinfo=timezone.utc)
                elapsed = max(0.0, (now_wall - started_at).total_seconds()) if started_at else 0.0
                slot = next((x for x in self.scheduler.slots if x.machine == row.machine and x.label == row.slot), None)
                run = Running(number=row.number, row_id=row.id, trial_id=row.optuna_trial_id,
                              slot=slot or _slot_of(row.machine, row.slot), handle=handle, stream=self.adapter.stream(),
                              deadline=now + max(0.0, self.spec.timeout_s - elapsed), started=now - elapsed)
                run.stored_points = set(s.execute(select(MetricPointRow.kind, MetricPointRow.step).where(
                    MetricPointRow.trial_id == row.id)).all())
                live = s.get(TrialRow, row.id)
                old = live.state
                live.state, live.controller, live.heartbeat_at = "running", self.owner, now_wall
                live.job_ref = handle.job_ref or live.job_ref
                live.started_at = live.started_at or now_wall
                ref = f" {handle.job_ref}" if handle.job_ref else ""
                s.add(EventRow(study_id=self.study.row.id, trial_number=row.number, machine=row.machine,
                               kind="trial.reattached", old=old, new="running",
                               message=f"re-attached to its job{ref} after a controller restart"))
                self.running[row.number] = run
                self.watchdog.started(row.number)
                self._row_states[row.id] = ("running", row.machine)
                if row.number in frozen and is_search_trial(frozen[row.number]):
                    self._counted_here.add(row.number)  # a lost end takes it off the budget count, as for our own
                self._say(f"trial {row.number}: re-attached to its running job on {row.machine} {row.slot or ''}".rstrip())
                if not self.claims.adopt(run.slot, row.number):
                    self._say(f"trial {row.number}: its slot {row.machine} {row.slot} is claimed by another study now; "
                              "its job is followed all the same")

    def _slots_to_fill(self) -> int:
        if self.max_new_trials is not None and self.dispatched >= self.max_new_trials:
            return 0
        if self._settled():
            self.progress.message = "the sampler has settled its decision"
            return 0
        counted, waiting = self._budget_counts()
        remaining = self.spec.budget.max_trials - counted
        want = remaining
        if self.spec.budget.parallel is not None:
            want = min(want, self.spec.budget.parallel - len(self.running))
        if self.max_new_trials is not None:
            want = min(want, self.max_new_trials - self.dispatched)
        self.progress.queued = max(0, min(remaining, waiting))
        return max(0, want)

    def _budget_counts(self) -> tuple[int, int]:
        """(trials that count against the budget, search trials queued); extra runs (a `batch`) count in neither.
        Both are read once a run, after recovery: under the study's lease no other controller writes the study's
        rows meanwhile, so this one keeps the count as it records search trials (`_prepare`) and ends them
        uncounted (`_finish_row`: lost)."""
        if self._counted is None:
            extra = [t.number for t in self.study.optuna.get_trials(deepcopy=False) if not is_search_trial(t)]
            with self._unit() as s:
                self._counted = s.scalar(select(func.count()).select_from(TrialRow).where(
                    TrialRow.study_id == self.study.row.id, TrialRow.state.in_(COUNTED_STATES),
                    TrialRow.number.not_in(extra)))
        counted = self._counted
        waiting = sum(1 for t in waiting_trials(self.study.optuna) if is_search_trial(t))
        return counted, waiting

    # ---- dispatch ------------------------------------------------------------------------------------
    @contextmanager
    def _unit(self):
        """One transaction for our rows and the Optuna writes made inside it; nested calls join the open one."""
        if self._session is not None:
            yield self._session
            return
        storage = self.study.optuna._storage
        with self.db.session() as s:
            self._session = s
            try:
                if isinstance(storage, LeasedStorage):
                    with storage.bind(s.connection(), self._writes):
                        yield s
                else:
                    yield s
                self._writes.flush(s.connection())
            finally:
                self._session = None
                self._writes.clear()

    def _trial_event(self, number: int, machine: str | None, old: str | None, new: str, message: str | None = None):
        """A trial's state change, written with the open transaction (one statement for all of them)."""
        assert self._session is not None, "trial events are written inside a _unit"
        self._writes.add(_INSERT_EVENTS, dict(at=_now(), study_id=self.study.row.id, trial_number=number,
                                              machine=machine, kind="trial.state", old=old, new=new, message=message))

    def _new_round(self) -> None:
        """The study's round counter + 1: read once under the lease (no other controller writes it), then kept."""
        with self._unit() as s:
            if self.round is None:
                self.round = s.scalar(select(StudyRow.rounds).where(StudyRow.id == self.study.row.id)) or 0
            self.round += 1
            self._writes.add(_UPDATE_ROUNDS, dict(id_=self.study.row.id, rounds=self.round))
        self.progress.round = self.round

    def _dispatch(self, slots: list[Slot]) -> list[bool]:
        """Run a new trial on each of `slots`: asked and recorded `pending` in one transaction, started, then
        recorded `running` in one more. Per slot, False when nothing was started (invalid values, empty queue)."""
        with self._unit() as s:
            slots = self.claims.take(slots, s)  # claimed with the trials: no other study's trial holds them
            if not slots:
                return []
            self._new_round()
            prepared = [self._prepare(slot) for slot in slots]
        self.claims.drop([slot for slot, p in zip(slots, prepared) if p is None])  # claimed, nothing to start there
        started = [self._start(p) for p in prepared if p is not None]
        started = [run for run in started if run is not None]
        if started:
            now = _now()
            with self._unit():
                for run in started:
                    self._writes.add(_UPDATE_RUNNING, dict(
                        id_=run.row_id, state="running", pid=run.handle.pid, pid_start=run.handle.pid_start,
                        started_at=now, heartbeat_at=now, command=run.handle.command,
                        container_image_id=run.handle.container_image_id, job_ref=run.handle.job_ref))
                    self._trial_event(run.number, run.slot.machine, "pending", "running")
        for run in started:
            self.running[run.number] = run
            self.watchdog.started(run.number)
            self._row_states[run.row_id] = ("running", run.slot.machine)
            self.dispatched += 1
        return [p is not None for p in prepared]

    def _prepare(self, slot: Slot) -> Prepared | None:
        """Ask for `slot`'s trial, build its job, add its `pending` row to the open transaction."""
        trial = self._ask(slot)
        if trial is None:  # nothing left in the queue for this controller
            return None
        number, trial_id = trial.number, trial._trial_id
        attrs = trial.user_attrs
        retry_of, attempt = attrs.get("retry_of"), int(attrs.get("attempt", 1))
        repeat_index = int(attrs.get("repeat_index", 0))
        params = {k: on_step(v, self.dists.get(k)) for k, v in trial.params.items()}  # 0.42, not 0.42000000000000004
        try:
            values = resolve_values(self.spec, params)
        except InvalidParams as exc:
            self._skip_invalid(number, trial_id, params, retry_of, attempt, repeat_index, str(exc))
            return None
        machine = self.fleet.machine(slot.machine)
        info = self.infos[slot.machine]
        unmodified = bool(attrs.get("unmodified"))  # a paired baseline run of the trainer as it is
        job = build_job(self.spec, self.name, number, repeat_index, values, early_exit=attrs.get("early_exit"),
                        steps=attrs.get("step_cut"), unmodified=unmodified)
        workdir = (Path(machine.workdir) / self.name / f"trial-{number:04d}").resolve()
        try:
            diff = None if unmodified else apply_injection(self.spec, values, job, workdir,
                                                           Path(self.study.row.spec_dir or "."))
        except InvalidParams as exc:
            self._skip_invalid(number, trial_id, params, retry_of, attempt, repeat_index, str(exc))
            return None
        if retry_of is None and repeat_index == 0:
            self._enqueue_repeats(params, number)
        row = dict(study_id=self.study.row.id, number=number, optuna_trial_id=trial_id, round=self.round,
                   variant="unmodified" if unmodified else variant_key(params), repeat_index=repeat_index,
                   retry_of=retry_of, attempt=attempt,
                   params=values, state="pending", machine=slot.machine, slot=slot.label,
                   gpu_model=info.gpu_type if slot.gpu_ids else None, gpu_count=len(slot.gpu_ids),
                   driver_version=info.driver_version if slot.gpu_ids else None,
                   command=job.argv, env=job.stored_env(), container_image=job.image or machine.container.image,
                   code_revision=self.code.revision, code_branch=self.code.branch, code_dirty=self.code.dirty,
                   file_checksums=self.code.checksums, workdir=str(workdir), log_path=str(workdir / "train.log"),
                   injection_diff=diff, controller=self.owner, created_at=_now())
        if is_search_trial(trial):
            self._counted_here.add(number)
            if self._counted is not None:
                self._counted += 1
        with self._unit() as s:
            row_id = self._new_trial_rows.add(s.connection(), self._writes, row)
            self._trial_event(number, slot.machine, None, "pending", f"round {self.round} on {slot.machine} {slot.label}")
            self.claims.assign(self._writes, slot, number)
        return Prepared(slot=slot, number=number, trial_id=trial_id, row_id=row_id, job=job, machine=machine,
                        workdir=workdir, values=values)

    def _start(self, p: Prepared) -> Running | None:
        """Start a prepared trial's job; a launch failure is recorded at once (None)."""
        row_id, number, trial_id, slot = p.row_id, p.number, p.trial_id, p.slot
        self._row_states[row_id] = ("pending", slot.machine)
        try:
            handle = self._launcher(p.machine).start(p.job, p.machine, slot, p.workdir, self.events)
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, (OSError, OrchError)):  # not the trial's fault: re-queued, the run stops
                with self._unit() as s:
                    self._finish_row(row_id, number, trial_id, "lost", "launch_error", None, None, {}, {},
                                     f"could not start: {type(exc).__name__}: {exc}")
                    enqueue_retry(self.study.optuna, s.get(TrialRow, row_id), self.spec.retries, self.spec)
                if self._fatal is None:  # raised by the loop once this dispatch's other trials are recorded
                    self._fatal = OrchError(f"trial {number} could not start on machine {slot.machine}: "
                                            f"{type(exc).__name__}: {exc} (fix: correct the machine's settings in the "
                                            "fleet file; the trial was re-queued and `orch study run` resumes)")
                return None
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._disk_full(row_id, number, trial_id, slot.machine, f"{DISK_FULL}: could not start: {exc}")
            elif not self._launcher(p.machine).probe(p.machine).reachable:  # the machine's fault, not the trial's
                self._lose_to_machine(row_id, number, trial_id, slot.machine, f"connection lost: could not start: {exc}")
            else:
                self._finish_row(row_id, number, trial_id, "failed", "launch_error", None, None, {}, {},
                                 f"could not start: {exc}")
                self.keeper.after_failure(slot, self.infos.get(slot.machine), "launch_error")
            return None
        now = time.monotonic()
        self._say(f"trial {number}: started on {slot.machine} {slot.label} "
                  + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.values.items()))
        return Running(number=number, row_id=row_id, trial_id=trial_id, slot=slot, handle=handle,
                       stream=self.adapter.stream(), deadline=now + self.spec.timeout_s, started=now)

    def _ask(self, slot: Slot) -> optuna.Trial | None:
        """The trial `slot` runs next: a queued search trial, else the sampler's next point. A sampler that fails
        (an option `orch study create` could not test, e.g. one used only after the startup trials) stops the run
        with one message; the transaction of this dispatch is rolled back, so nothing of it is written."""
        try:
            return next_trial(self.study.optuna, self.dists)
        except (OrchError, SQLAlchemyError):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the sampler raises
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise ConfigError(f"the {self.spec.sampler.name} sampler failed while choosing trial values: "
                              f"{type(exc).__name__}{': ' + text if text else ''}", file=self.study.row.spec_path,
                              field="sampler.options", fix="correct the sampler's options in the study file and create "
                              "it again under a new name; this study's finished trials are kept") from None

    def _skip_invalid(self, number: int, trial_id: int, params: dict, retry_of, attempt: int, repeat_index: int,
                      reason: str) -> None:
        """Values that cannot make a valid job: recorded as `invalid` (Optuna FAIL), nothing is started."""
        with self._unit() as s:
            s.add(TrialRow(study_id=self.study.row.id, number=number, optuna_trial_id=trial_id, round=self.round,
                           variant=variant_key(params), params=params, state="invalid", exit_reason="invalid_params",
                           note=reason, retry_of=retry_of, attempt=attempt, repeat_index=repeat_index))
            s.add(EventRow(study_id=self.study.row.id, trial_number=number, kind="trial.state", new="invalid",
                           message=reason))
            self.study.optuna.tell(number, state=TrialState.FAIL)
        self._last_invalid = reason
        self._say(f"trial {number}: skipped, {reason}")

    def _enqueue_repeats(self, params: dict, number: int) -> None:
        if self.spec.repeats <= 1:
            return
        counted, waiting = self._budget_counts()
        room = self.spec.budget.max_trials - counted - waiting - 1  # this trial is not in the DB yet
        for index in range(1, min(self.spec.repeats, room + 1)):
            self.study.optuna.enqueue_trial(params, user_attrs={"repeat_of": number, "repeat_index": index},
                                            skip_if_exists=False)

    # ---- events --------------------------------------------------------------------------------------
    def _drain(self, timeout: float) -> bool:
        """Handle what the launchers reported; True when a trial ended. Metric points are written with the next
        finished trial, or at most `POINTS_FLUSH_S` after they arrived."""
        batch = []
        try:
            batch.append(self.events.get(timeout=timeout))
            while True:
                batch.append(self.events.get_nowait())
        except queue.Empty:
            pass
        exits = []
        for event in batch:
            if isinstance(event, LineEvent):
                run = self.running.get(event.key)
                if run is not None:
                    self.watchdog.progressed(event.key)
                    for point in run.stream.feed(event.line):
                        run.pending_points.append(point)
                        if self._points_due is None:
                            self._points_due = time.monotonic() + POINTS_FLUSH_S
                        if point.kind == "val" and point.val_loss is not None:
                            run.last_val, run.last_step = point.val_loss, point.step
                        run.step, run.total_steps = point.step, point.total_steps or run.total_steps
                        if run.first_point is None:
                            run.first_point = (point.step, time.monotonic())
            elif event.key in self.running:
                exits.append(event)
        if not exits and (self._points_due is None or time.monotonic() < self._points_due):
            return False
        with self._unit():  # the points and every finished trial (our row and Optuna's tell): one transaction
            self._flush_points()
            for event in exits:
                self._on_exit(self.running.pop(event.key), event)
        return bool(exits)

    def _flush_points(self) -> None:
        """Write the points streamed since the last flush; a point seen again (a human line's JSON twin)
        replaces the stored one."""
        self._points_due = None
        inserts, updates, curve = [], [], []
        for run in self.running.values():
            latest = {(p.kind, p.step): p for p in run.pending_points}
            for key, p in latest.items():
                point_value = curve_value(self.spec, p)
                if point_value is not None:
                    curve.append((run.trial_id, p.step, point_value))
                values = dict(total_steps=p.total_steps, val_loss=p.val_loss, train_loss=p.train_loss,
                              train_time_ms=p.train_time_ms, step_avg_ms=p.step_avg_ms, extra=p.extra or None)
                if key in run.stored_points:
                    updates.append(dict(id_=run.row_id, kind_=p.kind, step_=p.step, **values))
                else:
                    run.stored_points.add(key)
                    inserts.append(dict(trial_id=run.row_id, kind=p.kind, step=p.step, recorded_at=_now(), **values))
            run.pending_points.clear()
        with self._unit():
            self._writes.extend(_INSERT_POINTS, inserts)
            self._writes.extend(_UPDATE_POINT, updates)
            for trial_id, step, point_value in curve:  # the trial's curve in Optuna (what optuna-dashboard plots)
                self.study.optuna._storage.set_trial_intermediate_value(trial_id, step, point_value)

    def _on_exit(self, run: Running, event: ExitEvent) -> None:
        parsed = run.stream.finish()
        self.watchdog.forget(run.number)
        if run.hung and not parsed.complete:
            self._hung(run, event, parsed)
            return
        if run.cancelled is not None and not parsed.complete:
            self._cancelled(run, event, parsed)
            return
        if run.cancelled is not None:  # it printed its final line before the kill: its outcome stands
            with self._unit() as s:
                control.close(s, self._cancel_requests.pop(run.number, []),
                              f"not cancelled: trial {run.number} finished first")
        if event.error and event.error.startswith("connection lost") and not parsed.complete:
            self._machine_lost(run, event.error)
            return
        if event.error and event.error.startswith(DISK_FULL):
            self._disk_full(run.row_id, run.number, run.trial_id, run.slot.machine, event.error, event.returncode)
            return
        outcome = decide(self.spec, parsed, event.returncode, timed_out=run.timed_out, launcher_error=event.error)
        self._finish_row(run.row_id, run.number, run.trial_id, outcome.state, outcome.exit_reason, outcome.value,
                         outcome.feasible, outcome.constraints, outcome.metrics, outcome.note,
                         exit_code=event.returncode, versions=parsed.versions, gpu_name=parsed.gpu_name)
        if outcome.retry:  # the study's on_failure says so: same values again, recorded as a retry
            with self._unit() as s:
                enqueue_retry(self.study.optuna, s.get(TrialRow, run.row_id), self.spec.retries, self.spec)
        if outcome.state == "failed":
            self.keeper.after_failure(run.slot, self.infos.get(run.slot.machine), outcome.exit_reason)
        if outcome.state == "complete":
            mark = "hit" if outcome.feasible else "miss"
            self._say(f"trial {run.number}: {self.spec.objective.metric}={outcome.value:.4g} "
                      + " ".join(f"{k}={outcome.metrics[k]:.4f}" for k in outcome.constraints if k in outcome.metrics)
                      + f" ({mark})")
        else:
            self._say(f"trial {run.number}: failed ({outcome.exit_reason}) {outcome.note or ''}".rstrip())

    def _finish_row(self, row_id: int, number: int, trial_id: int, state: str, exit_reason: str, value, feasible,
                    constraints: dict, metrics: dict, note: str | None, exit_code: int | None = None,
                    versions: dict | None = None, gpu_name: str | None = None) -> None:
        with self._unit() as s:
            known = self._row_states.pop(row_id, None)
            old, machine = known or s.execute(select(TrialRow.state, TrialRow.machine).where(TrialRow.id == row_id)).one()
            change = dict(id_=row_id, gpu_=gpu_name, state=state, exit_reason=exit_reason, value=value,
                          feasible=feasible, metrics=metrics or None, note=note, exit_code=exit_code, ended_at=_now())
            if versions:
                change["versions"] = versions
            self._writes.add(_UPDATE_TRIAL_ROW, change)
            self.claims.release(s, self._writes, number)  # its slot is free with its end
            if state not in COUNTED_STATES and number in self._counted_here:
                self._counted_here.discard(number)
                if self._counted is not None:
                    self._counted -= 1
            self._trial_event(number, machine, old, state, note)
            tell(self.study.optuna, trial_id, number, state, value, constraints, machine=machine,
                 exit_reason=exit_reason, metrics=metrics)
        self._tally(state, value, feasible, number)

    def _stalled(self, run: Running | None) -> None:
        """The progress watchdog: the trial printed nothing for `stall_s`; its job is killed (`_hung` records it)."""
        if run is None or run.timed_out or run.hung:
            return
        run.hung = True
        silent = self.watchdog.silent_s(run.number)
        run.handle.cancel("stalled")
        message = f"no log line for {silent:.1f} s (stall_s = {self.spec.stall_s:g} s): the job is killed"
        self._event(run.number, "trial.stalled", None, None, message)
        self._say(f"trial {run.number}: {message}")

    def _hung(self, run: Running, event: ExitEvent, parsed) -> None:
        """A trial the watchdog killed: `lost` with exit reason `hung` (not told to the sampler as a result), re-run
        as a recorded retry while `retries` remain, on another machine when one is free; its GPU set is checked."""
        note = (f"hung: no log line for {self.spec.stall_s:g} s (stall_s) on {run.slot.machine} {run.slot.label}; "
                "killed by the progress watchdog")
        with self._unit() as s:
            self._finish_row(run.row_id, run.number, run.trial_id, "lost", "hung", None, None, {}, {}, note,
                             exit_code=event.returncode, versions=parsed.versions, gpu_name=parsed.gpu_name)
            queued = enqueue_retry(self.study.optuna, s.get(TrialRow, run.row_id), self.spec.retries, self.spec,
                                   avoid_machine=run.slot.machine)
        self.keeper.after_failure(run.slot, self.infos.get(run.slot.machine), "hung")
        self._say(f"trial {run.number}: hung on {run.slot.machine} {run.slot.label}; "
                  + ("re-queued (another machine first)" if queued else "retries spent"))

    def _machine_lost(self, run: Running, error: str) -> None:
        """The machine dropped mid-run: it is marked down (no new trials) and the trial re-queued elsewhere."""
        self._lose_to_machine(run.row_id, run.number, run.trial_id, run.slot.machine, error)

    def _lose_to_machine(self, row_id: int, number: int, trial_id: int, name: str, error: str) -> None:
        """The machine is marked down, then the trial `lost` (machine_lost) and re-queued (in this order: whoever sees
        the lost trial sees the machine down)."""
        with self._unit() as s:
            machine = s.scalar(select(MachineRow).where(MachineRow.name == name))
            if machine is not None and machine.state != "down":
                s.add(EventRow(machine=machine.name, kind="machine.state", old=machine.state, new="down", message=error))
                machine.state, machine.note = "down", error
            self.scheduler.unavailable.add(name)
            self._machine_states = None  # read again at the next dispatch decision
            self._finish_row(row_id, number, trial_id, "lost", "machine_lost", None, None, {}, {}, error)
            queued = enqueue_retry(self.study.optuna, s.get(TrialRow, row_id), self.spec.retries, self.spec)
        self._say(f"trial {number}: machine {name} lost ({error}); it is marked down"
                  + ("; the trial is re-queued" if queued else "; retries spent"))

    def _disk_full(self, row_id: int, number: int, trial_id: int, machine: str, error: str,
                   exit_code: int | None = None) -> None:
        """The trial's working directory is full: the trial is `lost` (re-queued) and the study stops with the fix."""
        with self._unit() as s:
            self._finish_row(row_id, number, trial_id, "lost", "disk_full", None, None, {}, {}, error,
                             exit_code=exit_code)
            enqueue_retry(self.study.optuna, s.get(TrialRow, row_id), self.spec.retries, self.spec)
        workdir = self.fleet.machine(machine).workdir
        self._stop_reason = "disk full"
        self._fatal = OrchError(f"machine {machine!r}: {error}; trial {number} is re-queued (fix: free space under "
                                f"the machine's workdir {workdir!r} or point `workdir:` in the fleet file at a larger "
                                "disk, then `orch study run` resumes)")

    # ---- requests from other processes (control.py) ------------------------------------------------
    def _read_requests(self) -> bool:
        """Act on the open `orch study stop` / `orch trial cancel` requests (read every `control.READ_S`); True
        when the loop must look again at what to dispatch."""
        now = time.monotonic()
        if now < self._next_request_read:
            return False
        self._next_request_read = now + control.READ_S
        requests = control.open_requests(self.db, self.study.row.id)
        for request in requests:
            if request.id in self._stop_requests or any(request.id in ids for ids in self._cancel_requests.values()):
                continue  # acted on already, closed when its effect is done
            if request.kind == "stop":
                self._stop_requests.append(request.id)
                why = f"stopped by `orch study stop` from {request.requested_by}" + (
                    f": {request.reason}" if request.reason else "")
                if request.mode == "now":
                    self._stop_clean = True
                    self._say(f"{why}; killing {len(self.running)} running trial(s), they are re-queued")
                    self.request_stop(why)
                elif self._finishing is None:
                    self._finishing = self.progress.message = why
                    self._say(f"{why}; no new trial starts, {len(self.running)} running trial(s) finish first")
            elif request.kind == "cancel":
                outcome = self._cancel(request)
                if outcome is not None:
                    with self._unit() as s:
                        control.close(s, [request.id], outcome)
        return bool(requests)

    def _cancel(self, request: control.Request) -> str | None:
        """Cancel a running or queued trial; the outcome, or None when it comes once the job has ended."""
        number = request.trial_number
        why = f"cancelled by `orch trial cancel` from {request.requested_by}" + (
            f": {request.reason}" if request.reason else "")
        run = self.running.get(number)
        if run is not None:
            self._cancel_requests.setdefault(number, []).append(request.id)
            if run.cancelled is None:
                run.cancelled = why
                run.handle.cancel("cancelled")
                self._event(number, "trial.cancel", None, None, why)
                self._say(f"trial {number}: {why}; killing its job")
            return None
        queued = [t for t in waiting_trials(self.study.optuna) if t.number == number]
        if queued:
            with self._unit() as s:
                cancel_queued(s, self.study, queued[0], why)
            self._say(f"trial {number}: {why} (it was queued)")
            return f"trial {number} cancelled (it was queued, not started)"
        with self.db.session() as s:
            state = s.scalar(select(TrialRow.state).where(TrialRow.study_id == self.study.row.id,
                                                          TrialRow.number == number))
        return f"not cancelled: trial {number} " + (f"is {state}, not running" if state else "is not in this study")

    def _cancelled(self, run: Running, event: ExitEvent, parsed) -> None:
        """A trial whose job `orch trial cancel` killed: `cancelled`, not a failed outcome, not re-run."""
        with self._unit() as s:  # the trial's row, Optuna's and the request's close: one transaction
            self._finish_row(run.row_id, run.number, run.trial_id, "cancelled", "cancelled", None, None, {}, {},
                             run.cancelled, exit_code=event.returncode, versions=parsed.versions,
                             gpu_name=parsed.gpu_name)
            control.close(s, self._cancel_requests.pop(run.number, []), f"trial {run.number} cancelled")
        self._say(f"trial {run.number}: cancelled")

    def _close_requests(self) -> None:
        """As the run ends: its stop requests are done; a cancel whose job outlived the run is told so."""
        try:
            with self.db.session() as s:
                control.close(s, self._stop_requests, f"stopped: {self.progress.done} complete, "
                                                      f"{self.progress.failed} failed")
                for number, ids in self._cancel_requests.items():
                    control.close(s, ids, f"trial {number}: the run ended first (recorded lost, re-queued)")
        except Exception:  # noqa: BLE001 - the database may be why the run ends; the requests stay open
            pass

    # ---- housekeeping --------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        if not lease.renew(self.db, self.study.row.id, self.owner):
            self.request_stop("lost the study's lease to another controller")
            return
        if self._deleted_in_optuna():
            self._fatal = self._optuna_deleted_error()
            return
        if self.running:
            with self.db.session() as s:
                s.execute(update(TrialRow).where(TrialRow.id.in_([r.row_id for r in self.running.values()]))
                          .values(heartbeat_at=_now()))
        self.claims.renew()
        for message in self.claims.messages():  # the reaper's (dead controllers' claims freed)
            self._say(message)
        self._recheck_down_machines()
        self.scheduler.unavailable = self._unavailable_machines()

    def _close_claims(self) -> None:
        if self.claims is None:
            return
        try:
            self.claims.close()
        except Exception:  # noqa: BLE001 - the database may be why the run ends: the reaper of the next one frees them
            pass

    def _recheck_down_machines(self, force: bool = False) -> None:
        """Health checks (a probe) of every machine running none of our trials (those have their launcher's
        heartbeat), every `health_check_s`, in the background (`health`). A down machine that passes comes back into
        the fleet with its slots (also one that was unreachable when the controller started); an idle one that fails
        is marked down before a trial is sent to it. `force` waits for the probes (nothing is running)."""
        now = time.monotonic()
        if now >= self._next_health_check or force:
            self._next_health_check = now + self.health_check_s
            busy = {r.slot.machine for r in self.running.values()}
            self._health.submit(m for m in self.fleet.machines if m.name not in busy)
        results = self._health.results(wait_s=None if force else 0.0)
        if results:
            with self.db.session() as s:
                states = dict(s.execute(select(MachineRow.name, MachineRow.state).where(
                    MachineRow.state.in_(("down", "sick")))).all())
            busy = {r.slot.machine for r in self.running.values()}
        for machine, info in results:
            if info.reachable and states.get(machine.name) == "down":
                self.infos[machine.name] = info
                self._record_machine(machine, info)
                self.scheduler.refresh(machine.name, info)
                self._say(f"machine {machine.name} answers its probe again: back in the fleet once its health check "
                          "passes")
                self.keeper.admit(machine, info)  # a machine that was away is checked before it takes trials
            elif info.reachable and states.get(machine.name) == "sick" and machine.name not in busy:
                self.infos[machine.name] = info
                self.keeper.admit(machine, info)  # sick: checked again in the background
            elif not info.reachable and machine.name not in states and machine.name not in busy:
                self._record_machine(machine, info)
                self._say(f"machine {machine.name} failed its probe ({info.error}): marked down")
        while force and self.keeper.pending() and not self._stop.is_set():  # sick machines checked again: wait
            self.keeper.collect(wait_s=1.0)
        self.scheduler.unavailable = self._unavailable_machines()

    def _unavailable_machines(self) -> set[str]:
        """Machines that take no new trial: down, or drained (`orch fleet drain`), read from the database so that a
        change made by another process applies within `MACHINE_STATE_READ_S`; a read younger than that is reused
        (this controller's own changes clear it: `_record_machine`, `_lose_to_machine`)."""
        now = time.monotonic()
        if self._machine_states is not None and now - self._machine_states[0] < MACHINE_STATE_READ_S:
            return self._machine_states[1] | self._blocked()
        with self.db.session() as s:
            rows = s.execute(select(MachineRow.name, MachineRow.drain, MachineRow.state, MachineRow.note).where(
                MachineRow.state.in_(("down", "draining", "sick")) | MachineRow.drain.is_(True))).all()
        names = {m.name for m in self.fleet.machines}
        self._machine_rows = {r.name: (r.state, r.note, bool(r.drain)) for r in rows if r.name in names}
        drained = {r.name for r in rows if r.drain and r.name in names}
        for name in sorted(drained - self._drained):
            self._say(f"machine {name} is draining: its running trials finish, no new trial starts there")
        for name in sorted(self._drained - drained):
            self._say(f"machine {name} was undrained: it takes new trials again")
        self._drained = drained
        self._machine_states = (now, {r.name for r in rows})
        return self._machine_states[1] | self._blocked()

    def _blocked(self) -> set[str]:
        return self.keeper.blocked() if self.keeper is not None else set()

    def _free_slots(self, wanted: int) -> list[Slot]:
        """Up to `wanted` free slots of machines that take trials, none held by a health check or a foreign process,
        offered to this study (`claims`: no other study's trial holds them, the fleet's policy gives them to it; the
        dispatch claims them); a machine where a waiting retry's trial hung comes last."""
        candidates = self.scheduler.free({r.slot for r in self.running.values()})
        avoid = {t.user_attrs["avoid_machine"] for t in waiting_trials(self.study.optuna)
                 if "avoid_machine" in t.user_attrs} if candidates else set()
        if avoid:
            candidates.sort(key=lambda slot: slot.machine in avoid)  # stable: the fleet's interleaving stays
        # screened before the offer cuts them to `wanted`: a GPU a foreign process holds stays refused while it is held
        candidates = self.keeper.screen(candidates, self.infos, len(candidates), avoid)
        return self.claims.offer(candidates, wanted)  # free across the fleet's studies: this study's share

    def _update_refusals(self) -> None:
        """Report (and record as events) the machines that get no trials and why, as it changes."""
        self.keeper.update(self.infos, self._machine_rows, self.scheduler.slots)
        self.progress.refusals = self.keeper.lines()

    def _wake(self) -> None:
        try:
            self.events.put_nowait(ExitEvent(-1, None, "wake"))
        except queue.Full:  # the loop is awake anyway
            pass

    def _refresh_progress(self) -> None:
        """Counts and best trial are read from the database once; after that `_tally` keeps them as this
        controller (the study's only writer, under its lease) finishes trials: no O(trials) read per event."""
        p = self.progress
        if not self._progress_read:
            with self.db.session() as s:
                rows = s.execute(select(TrialRow.state, TrialRow.value, TrialRow.feasible, TrialRow.number).where(
                    TrialRow.study_id == self.study.row.id)).all()
            p.done = sum(1 for r in rows if r.state == "complete")
            p.failed = sum(1 for r in rows if r.state == "failed")
            for r in rows:
                self._tally_best(r.state, r.value, r.feasible, r.number)
            self._progress_read = True
        p.running = dict(self.running)
        self.reporter(p, "")

    def _tally(self, state: str, value, feasible, number: int) -> None:
        if self._progress_read:
            self.progress.done += state == "complete"
            self.progress.failed += state == "failed"
            self._tally_best(state, value, feasible, number)

    def _tally_best(self, state: str, value, feasible, number: int) -> None:
        p = self.progress
        if state != "complete" or feasible is False or value is None:
            return
        if (p.best_value is None or (value < p.best_value if self.spec.objective.direction == "minimize"
                                     else value > p.best_value) or (value == p.best_value and number < p.best_number)):
            p.best_value, p.best_number = value, number

    def _say(self, message: str) -> None:
        if hasattr(self, "progress"):
            self.reporter(self.progress, message)

    def _event(self, number: int | None, kind: str, old: str | None, new: str | None, message: str) -> None:
        with self.db.session() as s:
            s.add(EventRow(study_id=self.study.row.id, trial_number=number, kind=kind, old=old, new=new, message=message))

    def _set_status(self, status: str) -> None:
        with self.db.session() as s:
            row = s.get(StudyRow, self.study.row.id)
            if row.status != status:
                s.add(EventRow(study_id=row.id, kind="study.state", old=row.status, new=status))
                row.status = status
                row.finished_at = _now() if status == "finished" else None

    def _stopped_by(self, exc: Exception | None) -> None:
        """The run ends with an error, or is stopped (None): the study is `stopped` (resumable), not left `running`."""
        try:
            self._set_status("stopped")
            if exc is not None:
                self._event(None, "study.error", None, None, str(exc)[:2000])
        except Exception:  # noqa: BLE001 - the database may be why it stopped; the error itself is raised
            pass

    def _finish_study(self) -> None:
        counted, _ = self._budget_counts()
        if counted >= self.spec.budget.max_trials or self._settled():
            self._set_status("finished")
        else:  # `orch study stop`, `--max-new`: resumable, and no controller runs it now
            self._set_status("stopped")

    def _settled(self) -> bool:
        """The sampler says its decision is settled (only a `DecidingSampler` can)."""
        sampler = self.study.optuna.sampler
        return isinstance(sampler, DecidingSampler) and sampler.settled(self.study.optuna)

    def _deleted_in_optuna(self) -> bool:
        """The study's Optuna half was deleted (optuna-dashboard, `optuna delete-study`) while this ran."""
        if not self._optuna_gone and hasattr(self, "study"):
            try:
                with self.db.session() as s:
                    self._optuna_gone = not optuna_study_ids(s, [self.study.row.optuna_study_name])
            except SQLAlchemyError:  # the database itself is why the run stops: that error is the one to report
                return False
        return self._optuna_gone

    def _optuna_deleted_error(self) -> OrchError:
        return OrchError(f"study {self.name!r} was deleted from Optuna's tables while it ran (optuna-dashboard or "
                         "`optuna delete-study`): its jobs are stopped and nothing more is recorded (fix: `orch study "
                         f"delete {self.name} --yes` removes what orch kept of it; create it again to start over)")

    def _shutdown(self) -> None:
        """Stop every job still running: each becomes `lost` and is re-queued as a retry for the next run."""
        self._health.close()
        if self.keeper is not None:
            self.keeper.close()
        if self._optuna_gone:  # no study left to record them in: the jobs are only stopped
            for run in self.running.values():
                run.handle.cancel("the study was deleted")
            self.running.clear()
        if not self.running:
            return
        for run in self.running.values():
            run.handle.cancel(self._stop_reason or "controller exit")
        deadline = time.monotonic() + 15
        while self.running and time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(event, ExitEvent) and event.key in self.running:
                run = self.running.pop(event.key)
                note = f"stopped: {self._stop_reason or 'controller exit'}"
                with self._unit() as s:
                    self._finish_row(run.row_id, run.number, run.trial_id, "lost", "interrupted", None, None, {}, {},
                                     note, exit_code=event.returncode)
                    enqueue_retry(self.study.optuna, s.get(TrialRow, run.row_id), self.spec.retries, self.spec)
        self.running.clear()


def cancel_queued(session, study: OpenStudy, frozen: optuna.trial.FrozenTrial, note: str) -> None:
    """Take a queued (WAITING) trial off the queue: Optuna FAIL (exit reason `cancelled`) and a `cancelled` row of
    ours, in `session`'s transaction (the caller holds the study's lease)."""
    storage = study.optuna._storage
    storage.set_trial_system_attr(frozen._trial_id, ATTR_EXIT_REASON, "cancelled")
    storage.set_trial_user_attr(frozen._trial_id, "exit_reason", "cancelled")  # what optuna-dashboard shows
    storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL)
    attrs, params = frozen.user_attrs, dict(frozen.system_attrs.get("fixed_params") or frozen.params)
    session.add(TrialRow(study_id=study.row.id, number=frozen.number, optuna_trial_id=frozen._trial_id, round=0,
                         variant=variant_key(params), params=params, state="cancelled", exit_reason="cancelled",
                         note=note, retry_of=attrs.get("retry_of"), attempt=int(attrs.get("attempt", 1)),
                         repeat_index=int(attrs.get("repeat_index", 0)), ended_at=_now()))
    session.add(EventRow(study_id=study.row.id, trial_number=frozen.number, kind="trial.state", old="queued",
                         new="cancelled", message=note))


def _slot_of(machine: str, label: str | None) -> Slot:
    """A slot from its recorded label (`gpu:0,1`, `cpu:3`), for a re-attached trial whose machine has no such slot
    in this run's plan."""
    if label and label.startswith("gpu:"):
        return Slot(machine, -1, gpu_ids=tuple(int(g) for g in label[4:].split(",") if g.isdigit()))
    index = label.split(":", 1)[1] if label and ":" in label else ""
    return Slot(machine, int(index) if index.isdigit() else -1)


def install_signal_handlers(controller: Controller) -> None:
    def _handler(signum, _frame):
        controller.request_stop(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


__all__ = ["Controller", "Progress", "StopRequested", "install_signal_handlers"]
