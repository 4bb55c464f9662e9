"""The controller (`orch study run`): fill free slots with trials from its source, stream logs into the database,
tell Optuna each outcome, until the source has nothing left. It can be killed at any moment: `recovery` reconciles
the database on the next start, so no outcome is lost and no trial runs twice without being recorded as a retry.

Crash-safe order of a dispatch: Optuna `ask` with our row `pending` (one transaction) -> start the job -> our row
`running`. A finish: our row `complete`/`failed` with Optuna's `tell` (one transaction). The study's Optuna trials
are kept in memory under the lease (`study/leased_storage.py`), and each step above is one transaction for every trial
that reaches it in a pass of the loop, so the cost per trial stays small on a large fleet.

This module is the loop and what happens to a trial's job; the parts it composes:
- `sources.py`: where trials come from (the search, or a batch of extra runs);
- `ledger.py`: every write about the trials (rows, events, metric points, Optuna's tell) and the budget counts;
- `fleet_state.py`: the machines, their health and drain, and the free slots this study may use.
"""

from __future__ import annotations

import errno
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path
from typing import Callable

from sqlalchemy import select

from db import Database, TrialRow

from ..config.errors import OrchError
from ..config.fleet import Fleet, Machine
from ..jobs import InvalidParams, apply_injection, build_job, resolve_values
from ..launchers.base import Event, ExitEvent, JobHandle, JobRecord, Launcher, LineEvent, Slot
from ..liveness.watchdog import ProgressWatchdog
from ..parsers import LogStream, MetricPoint, get_adapter
from ..fleet.preflight import check_fleet_fits
from ..provenance import code_info
from ..records import DISK_FULL, variant_key
from ..samplers import distributions
from ..fleet.scheduler import NoCapacity
from ..study import lease, trials
from ..study.leased_storage import on_step
from ..study.outcomes import decide
from ..study.queue import cancel_queued, enqueue_retry, is_search_trial, waiting_trials
from ..warm.plan import warm_plan
from . import control
from .control import StopRequested
from .fleet_state import HEALTH_CHECK_S, FleetState
from .ledger import TrialLedger, now as _now
from .recovery import recover
from .sources import SearchTrials, TrialSource

POINTS_FLUSH_S = 0.25  # metric points reach the database at most this long after their line
HEARTBEAT_S = 5.0
MAX_INVALID_IN_A_ROW = 50
SETTLE_S = 30.0  # a finished run waits this long at most for an earlier run's jobs still stopping (ssh: 5 s grace)
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


class Controller:
    def __init__(self, db: Database, name: str, fleet: Fleet, *, reporter: Callable[[Progress, str], None] | None = None,
                 launchers: dict[str, Launcher] | None = None, heartbeat_s: float = HEARTBEAT_S,
                 max_new_trials: int | None = None, health_check_s: float = HEALTH_CHECK_S,
                 source: TrialSource | None = None) -> None:
        self.db, self.name, self.fleet = db, name, fleet
        self.reporter = reporter or (lambda progress, message: None)
        self.heartbeat_s = heartbeat_s
        self.source = source or SearchTrials(max_new_trials)
        self.source.bind(self)
        self.machines = FleetState(db, fleet, launchers, health_check_s)
        # bounded: a job printing faster than the controller parses is slowed down, not buffered in memory
        self.events: "queue.Queue[Event]" = queue.Queue(maxsize=EVENT_QUEUE_MAX)
        self._fatal: OrchError | None = None  # stops the study after the current batch (e.g. a full disk)
        self.running: dict[int, Running] = {}
        self.owner = lease.controller_id()
        self._stop = threading.Event()
        self._stop_reason = ""
        self._stop_clean = False  # `orch study stop --now`: the run ends normally once its trials are killed
        self._finishing: str | None = None  # `orch study stop`: why no new trial starts (the run ends after them)
        self._next_request_read = 0.0  # when `orch_requests` is read again (control.READ_S)
        self._stop_requests: list[int] = []  # closed as the run ends
        self._cancel_requests: dict[int, list[int]] = {}  # trial number -> requests closed when it has ended
        self.dispatched = 0
        self._last_invalid = ""
        self.watchdog = ProgressWatchdog(None)
        self.ledger: TrialLedger | None = None  # set up in `run`, with the study
        self._points_due: float | None = None  # when the metric points waiting in `running` must be written

    # the fleet as this run sees it (fleet_state.py)
    @property
    def scheduler(self):
        return self.machines.scheduler

    @property
    def infos(self):
        return self.machines.infos

    @property
    def keeper(self):
        return self.machines.keeper

    @property
    def claims(self):
        return self.machines.claims

    def _launcher(self, machine: Machine) -> Launcher:
        return self.machines.launcher(machine)

    # ---- main loop -----------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self._stop.set()
        self._wake()

    def run(self) -> Progress:
        opened = self.source.open()
        self.study, self.spec = opened, opened.spec
        self.adapter = get_adapter(self.spec.trainer.log_format)
        self.dists = distributions(self.spec)
        sid = opened.row.id
        check_fleet_fits(self.fleet, self.spec)  # a study no machine could ever run: refused before any write
        lease.acquire(self.db, sid, self.owner)
        trials.reload(opened.optuna)  # read under the lease: nobody else writes the trials now
        self.progress = Progress(study=self.name, max_trials=self.spec.budget.max_trials)
        self.watchdog = ProgressWatchdog(self.spec.stall_s)
        self.machines.start(sid, self.name, self.spec, self.owner, self.heartbeat_s, say=self._say, wake=self._wake)
        self.ledger = TrialLedger(self.db, opened, self.progress, self.claims.release)
        try:
            adopted: list[tuple[TrialRow, JobHandle]] = []
            recover(self.db, opened, self.spec, self.adapter, report=lambda m: self._say(m),
                    reattach=lambda row: self._reattach(row, adopted))
            self.progress.refusals = self.machines.plan()
            self._adopt(adopted)
            self.machines.admit_reachable()
            spec_dir = Path(opened.row.spec_dir or ".")
            self.code = code_info((spec_dir / self.spec.trainer.code_dir).resolve(), self.spec.trainer.files)
            warm_plan(self.spec, spec_dir, self.code.checksums)  # a data file gone since create: stop now, naming it
            self.source.set_status("running")
            self._loop()
            self._settle_claims()
        except StopRequested:
            self._stopped_by(None)
            if not self._stop_clean:
                raise
            self.progress.message = self._stop_reason
        except Exception as exc:
            if not isinstance(exc, OrchError) and self.ledger.deleted_in_optuna():  # e.g. a write to its rows failed
                error = self.ledger.optuna_deleted_error(self.name)
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
                slots_wanted = self.source.slots_to_fill() if self._finishing is None else 0  # `orch study stop`
                if slots_wanted == 0 and not self.running:
                    self.source.finished()
                    return
                self.machines.refresh_unavailable()  # `orch fleet drain` from any process
                round_open = self.spec.budget.dispatch == "rounds" and self.running
                free = [] if round_open else self._free_slots(slots_wanted)
                if round_open:
                    self.claims.idle()
                waiting = self.claims.waiting is not None  # for slots other studies hold: a state, not a failure
                if not free and not self.running and not self.keeper.pending() and not waiting:
                    self.machines.recheck(set(), force=True, stop=self._stop)
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
                    self.ledger.event(run.number, "trial.timeout", None, None, f"timeout after {self.spec.timeout_s:g} s")
            for number in self.watchdog.stalled():
                self._stalled(self.running.get(number))
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + self.heartbeat_s
                changed = True

    def _free_slots(self, wanted: int) -> list[Slot]:
        """This study's free slots (fleet_state.py); a machine where a waiting retry's trial hung comes last."""
        busy = [r.slot for r in self.running.values()]
        return self.machines.free_slots(wanted, busy, lambda: {t.user_attrs["avoid_machine"] for t in waiting_trials(
            self.study.optuna) if "avoid_machine" in t.user_attrs})

    def _update_refusals(self) -> None:
        self.progress.refusals = self.machines.update_refusals()

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
        with self.ledger.unit() as s:
            for row, handle in adopted:
                started_at = row.started_at
                if started_at is not None and started_at.tzinfo is None:
                    started_at = started_at.replace(tzinfo=timezone.utc)
                elapsed = max(0.0, (now_wall - started_at).total_seconds()) if started_at else 0.0
                slot = next((x for x in self.scheduler.slots if x.machine == row.machine and x.label == row.slot), None)
                run = Running(number=row.number, row_id=row.id, trial_id=row.optuna_trial_id,
                              slot=slot or _slot_of(row.machine, row.slot), handle=handle, stream=self.adapter.watch(),
                              deadline=now + max(0.0, self.spec.timeout_s - elapsed), started=now - elapsed)
                search = row.number in frozen and is_search_trial(frozen[row.number])
                run.stored_points = self.ledger.adopt(s, row, self.owner, handle.job_ref, search)
                self.running[row.number] = run
                self.watchdog.started(row.number)
                self._say(f"trial {row.number}: re-attached to its running job on {row.machine} {row.slot or ''}".rstrip())
                if not self.claims.adopt(run.slot, row.number):
                    self._say(f"trial {row.number}: its slot {row.machine} {row.slot} is claimed by another study now; "
                              "its job is followed all the same")

    # ---- dispatch ------------------------------------------------------------------------------------
    def _dispatch(self, slots: list[Slot]) -> list[bool]:
        """Run a new trial on each of the source's choice of `slots`: asked and recorded `pending` in one transaction,
        started, then recorded `running` in one more. Per slot, False when nothing was started (invalid values, an
        empty queue)."""
        chosen = self.source.choose(slots)
        if not chosen:
            return []
        with self.ledger.unit() as s:
            chosen = self.claims.take(chosen, s)  # claimed with the trials: no other study's trial holds them
            if not chosen:
                return []
            self.ledger.new_round()
            prepared = [self._prepare(slot) for slot in chosen]
        self.claims.drop([slot for slot, p in zip(chosen, prepared) if p is None])  # claimed, nothing to start there
        started = [self._start(p) for p in prepared if p is not None]
        started = [run for run in started if run is not None]
        if started:
            self.ledger.mark_running(started)
        for run in started:
            self.running[run.number] = run
            self.watchdog.started(run.number)
            self.dispatched += 1
        return [p is not None for p in prepared]

    def _prepare(self, slot: Slot) -> Prepared | None:
        """Ask for `slot`'s trial, build its job, add its `pending` row to the open transaction."""
        trial = self.source.ask(slot)
        if trial is None:  # nothing left in the queue for this controller
            return None
        number, trial_id = trial.number, trials.trial_id(trial)
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
                        steps=attrs.get("step_cut"), unmodified=unmodified, checksums=self.code.checksums,
                        spec_dir=Path(self.study.row.spec_dir or "."))  # + the warm plan (orchestrator/warm)
        workdir = (Path(machine.workdir) / self.name / f"trial-{number:04d}").resolve()
        try:
            diff = None if unmodified else apply_injection(self.spec, values, job, workdir,
                                                           Path(self.study.row.spec_dir or "."))
        except InvalidParams as exc:
            self._skip_invalid(number, trial_id, params, retry_of, attempt, repeat_index, str(exc))
            return None
        self.source.prepared(params, number, first_run=retry_of is None and repeat_index == 0)
        row = dict(study_id=self.study.row.id, number=number, optuna_trial_id=trial_id, round=self.ledger.round,
                   variant="unmodified" if unmodified else variant_key(params), repeat_index=repeat_index,
                   retry_of=retry_of, attempt=attempt,
                   params=values, state="pending", machine=slot.machine, slot=slot.label,
                   gpu_model=info.gpu_type if slot.gpu_ids else None, gpu_count=len(slot.gpu_ids),
                   driver_version=info.driver_version if slot.gpu_ids else None,
                   command=job.argv, env=job.stored_env(), container_image=job.image or machine.container.image,
                   code_revision=self.code.revision, code_branch=self.code.branch, code_dirty=self.code.dirty,
                   file_checksums=self.code.checksums, workdir=str(workdir), log_path=str(workdir / "train.log"),
                   injection_diff=diff, controller=self.owner, created_at=_now())
        with self.ledger.unit():
            row_id = self.ledger.add_pending(row, search=is_search_trial(trial))
            self.ledger.trial_event(number, slot.machine, None, "pending",
                                    f"round {self.ledger.round} on {slot.machine} {slot.label}")
            self.claims.assign(self.ledger.writes, slot, number)
        return Prepared(slot=slot, number=number, trial_id=trial_id, row_id=row_id, job=job, machine=machine,
                        workdir=workdir, values=values)

    def _start(self, p: Prepared) -> Running | None:
        """Start a prepared trial's job; a launch failure is recorded at once (None)."""
        row_id, number, trial_id, slot = p.row_id, p.number, p.trial_id, p.slot
        self.ledger.row_states[row_id] = ("pending", slot.machine)
        try:
            handle = self._launcher(p.machine).start(p.job, p.machine, slot, p.workdir, self.events)
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, (OSError, OrchError)):  # not the trial's fault: re-queued, the run stops
                self._lose(row_id, number, trial_id, "launch_error", f"could not start: {type(exc).__name__}: {exc}")
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
                self.ledger.finish(row_id, number, trial_id, "failed", "launch_error", None, None, {}, {},
                                   f"could not start: {exc}")
                self.keeper.after_failure(slot, self.infos.get(slot.machine), "launch_error")
            return None
        now = time.monotonic()
        self._say(f"trial {number}: started on {slot.machine} {slot.label} "
                  + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.values.items()))
        return Running(number=number, row_id=row_id, trial_id=trial_id, slot=slot, handle=handle,
                       stream=self.adapter.watch(), deadline=now + self.spec.timeout_s, started=now)

    def _skip_invalid(self, number: int, trial_id: int, params: dict, retry_of, attempt: int, repeat_index: int,
                      reason: str) -> None:
        self.ledger.skip_invalid(number, trial_id, params, retry_of, attempt, repeat_index, reason)
        self._last_invalid = reason
        self._say(f"trial {number}: skipped, {reason}")

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
        with self.ledger.unit():  # the points and every finished trial (our row and Optuna's tell): one transaction
            self._points_due = None
            self.ledger.flush_points(self.running.values())
            for event in exits:
                self._on_exit(self.running.pop(event.key), event)
        return bool(exits)

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
            with self.ledger.unit() as s:
                control.close(s, self._cancel_requests.pop(run.number, []),
                              f"not cancelled: trial {run.number} finished first")
        if event.error and event.error.startswith("connection lost") and not parsed.complete:
            self._lose_to_machine(run.row_id, run.number, run.trial_id, run.slot.machine, event.error)
            return
        if event.error and event.error.startswith(DISK_FULL):
            self._disk_full(run.row_id, run.number, run.trial_id, run.slot.machine, event.error, event.returncode)
            return
        outcome = decide(self.spec, parsed, event.returncode, timed_out=run.timed_out, launcher_error=event.error)
        self.ledger.finish(run.row_id, run.number, run.trial_id, outcome.state, outcome.exit_reason, outcome.value,
                           outcome.feasible, outcome.constraints, outcome.metrics, outcome.note,
                           exit_code=event.returncode, versions=parsed.versions, gpu_name=parsed.gpu_name)
        if outcome.retry:  # the study's on_failure says so: same values again, recorded as a retry
            self._retry(run.row_id)
        if outcome.state == "failed":
            self.keeper.after_failure(run.slot, self.infos.get(run.slot.machine), outcome.exit_reason)
        if outcome.state == "complete":
            mark = "hit" if outcome.feasible else "miss"
            self._say(f"trial {run.number}: {self.spec.objective.metric}={outcome.value:.4g} "
                      + " ".join(f"{k}={outcome.metrics[k]:.4f}" for k in outcome.constraints if k in outcome.metrics)
                      + f" ({mark})")
        else:
            self._say(f"trial {run.number}: failed ({outcome.exit_reason}) {outcome.note or ''}".rstrip())

    def _retry(self, row_id: int, avoid_machine: str | None = None) -> bool:
        """Queue the same values again as a recorded retry (while `retries` remain), in the open transaction."""
        with self.ledger.unit() as s:
            return enqueue_retry(self.study.optuna, s.get(TrialRow, row_id), self.spec.retries, self.spec,
                                 avoid_machine=avoid_machine)

    def _lose(self, row_id: int, number: int, trial_id: int, exit_reason: str, note: str, exit_code: int | None = None,
              parsed=None, avoid_machine: str | None = None) -> bool:
        """The trial is `lost` (not an outcome the sampler learns from) and re-queued as a retry: one transaction."""
        with self.ledger.unit():
            self.ledger.finish(row_id, number, trial_id, "lost", exit_reason, None, None, {}, {}, note,
                               exit_code=exit_code, versions=parsed.versions if parsed else None,
                               gpu_name=parsed.gpu_name if parsed else None)
            return self._retry(row_id, avoid_machine)

    def _stalled(self, run: Running | None) -> None:
        """The progress watchdog: the trial printed nothing for `stall_s`; its job is killed (`_hung` records it)."""
        if run is None or run.timed_out or run.hung:
            return
        run.hung = True
        silent = self.watchdog.silent_s(run.number)
        run.handle.cancel("stalled")
        message = f"no log line for {silent:.1f} s (stall_s = {self.spec.stall_s:g} s): the job is killed"
        self.ledger.event(run.number, "trial.stalled", None, None, message)
        self._say(f"trial {run.number}: {message}")

    def _hung(self, run: Running, event: ExitEvent, parsed) -> None:
        """A trial the watchdog killed: `lost` with exit reason `hung` (not told to the sampler as a result), re-run
        as a recorded retry while `retries` remain, on another machine when one is free; its GPU set is checked."""
        note = (f"hung: no log line for {self.spec.stall_s:g} s (stall_s) on {run.slot.machine} {run.slot.label}; "
                "killed by the progress watchdog")
        queued = self._lose(run.row_id, run.number, run.trial_id, "hung", note, event.returncode, parsed,
                            avoid_machine=run.slot.machine)
        self.keeper.after_failure(run.slot, self.infos.get(run.slot.machine), "hung")
        self._say(f"trial {run.number}: hung on {run.slot.machine} {run.slot.label}; "
                  + ("re-queued (another machine first)" if queued else "retries spent"))

    def _lose_to_machine(self, row_id: int, number: int, trial_id: int, name: str, error: str) -> None:
        """The machine is marked down, then the trial `lost` (machine_lost) and re-queued (in this order: whoever sees
        the lost trial sees the machine down)."""
        with self.ledger.unit() as s:
            self.machines.mark_down(s, name, error)
            queued = self._lose(row_id, number, trial_id, "machine_lost", error)
        self._say(f"trial {number}: machine {name} lost ({error}); it is marked down"
                  + ("; the trial is re-queued" if queued else "; retries spent"))

    def _disk_full(self, row_id: int, number: int, trial_id: int, machine: str, error: str,
                   exit_code: int | None = None) -> None:
        """The trial's working directory is full: the trial is `lost` (re-queued) and the study stops with the fix."""
        self._lose(row_id, number, trial_id, "disk_full", error, exit_code)
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
                    with self.ledger.unit() as s:
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
                self.ledger.event(number, "trial.cancel", None, None, why)
                self._say(f"trial {number}: {why}; killing its job")
            return None
        queued = [t for t in waiting_trials(self.study.optuna) if t.number == number]
        if queued:
            with self.ledger.unit() as s:
                cancel_queued(s, self.study, queued[0], why)
            self._say(f"trial {number}: {why} (it was queued)")
            return f"trial {number} cancelled (it was queued, not started)"
        with self.db.session() as s:
            state = s.scalar(select(TrialRow.state).where(TrialRow.study_id == self.study.row.id,
                                                          TrialRow.number == number))
        return f"not cancelled: trial {number} " + (f"is {state}, not running" if state else "is not in this study")

    def _cancelled(self, run: Running, event: ExitEvent, parsed) -> None:
        """A trial whose job `orch trial cancel` killed: `cancelled`, not a failed outcome, not re-run."""
        with self.ledger.unit() as s:  # the trial's row, Optuna's and the request's close: one transaction
            self.ledger.finish(run.row_id, run.number, run.trial_id, "cancelled", "cancelled", None, None, {}, {},
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
        if self.ledger.deleted_in_optuna():
            self._fatal = self.ledger.optuna_deleted_error(self.name)
            return
        self.ledger.heartbeat([r.row_id for r in self.running.values()])
        self.claims.renew()
        for message in self.claims.messages():  # the reaper's (dead controllers' claims freed)
            self._say(message)
        self.machines.recheck({r.slot.machine for r in self.running.values()})

    def _settle_claims(self) -> None:
        """The study is done: jobs of an earlier run (its controller killed) may still be stopping on their slots.
        Wait for them (at most SETTLE_S) so that the study holds nothing of the fleet once this run ends."""
        try:
            left = self.claims.left_by_earlier_runs() if self.claims is not None else []
            if not left:
                return
            self._say(f"waiting for {len(left)} job(s) of an earlier run to stop ({', '.join(left)})")
            left = self.claims.settle(left, SETTLE_S, self._stop)
        except Exception as exc:  # noqa: BLE001 - the study is done; a database outage now leaves them to the next run
            self._say(f"could not check an earlier run's claims ({type(exc).__name__}); the next run frees them")
            return
        for message in self.claims.messages():
            self._say(message)
        if left:
            self._say(f"still held after {SETTLE_S:g} s: {', '.join(left)}; the next run on this database frees them "
                      "once their jobs are gone")

    def _close_claims(self) -> None:
        if self.claims is None:
            return
        try:
            self.claims.close()
        except Exception:  # noqa: BLE001 - the database may be why the run ends: the reaper of the next one frees them
            pass

    def _wake(self) -> None:
        try:
            self.events.put_nowait(ExitEvent(-1, None, "wake"))
        except queue.Full:  # the loop is awake anyway
            pass

    def _refresh_progress(self) -> None:
        self.ledger.refresh_progress()
        self.progress.running = dict(self.running)
        self.reporter(self.progress, "")

    def _say(self, message: str) -> None:
        if hasattr(self, "progress"):
            self.reporter(self.progress, message)

    def _stopped_by(self, exc: Exception | None) -> None:
        """The run ends with an error, or is stopped (None): the study is `stopped` (resumable), not left `running`."""
        try:
            self.source.set_status("stopped")
            if exc is not None:
                self.ledger.event(None, "study.error", None, None, str(exc)[:2000])
        except Exception:  # noqa: BLE001 - the database may be why it stopped; the error itself is raised
            pass

    def _shutdown(self) -> None:
        """Stop every job still running: each becomes `lost` and is re-queued as a retry for the next run."""
        self.machines.close()
        if self.ledger is not None and self.ledger.optuna_gone:  # no study left to record them in: only stopped
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
                self._lose(run.row_id, run.number, run.trial_id, "interrupted",
                           f"stopped: {self._stop_reason or 'controller exit'}", event.returncode)
        self.running.clear()


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
