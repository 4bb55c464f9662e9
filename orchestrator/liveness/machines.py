"""The machine side of liveness for one controller run: pre-flight checks (`HealthGate`), the busy-GPU screen
(`GpuGuard`) and the refusals (`RefusalBoard`), with what each writes: a sick machine's state and note in
`orch_machines`, and `machine.health`, `machine.state`, `machine.refused` and `machine.accepted` events.

The controller calls it at fixed points of its loop (orchestrator/run/): `admit` after a probe found a
machine reachable, `screen` on the free slots of a dispatch, `after_failure` when a trial failed on a slot,
`collect` when woken, `update` once a pass (which reports the refusals that changed).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import select

from db import Database, EventRow, MachineRow

from ..config.fleet import Fleet, Machine
from ..launchers.base import Launcher, MachineInfo, Slot
from ..fleet.scheduler import matches_labels
from .gpu_guard import GpuGuard
from .health_check import CheckResult, HealthGate
from .refusals import ACCEPTED, REFUSED, Refusal, RefusalBoard, probe_refusal, split_fix

#: exit reasons of a trial after which its GPU set is checked before it takes another trial
SUSPECT_EXITS = frozenset({"crashed", "incomplete", "hung", "launch_error", "timeout"})
#: the refusal kinds a machine's row (down, drained) or probe stands for, named so in the no-capacity message
DOWN_KINDS = ("unreachable", "host_key", "drained")


class MachineKeeper:
    def __init__(self, db: Database, fleet: Fleet, launcher_for: Callable[[Machine], Launcher], *, study_id: int,
                 gpus_per_trial: int, labels: dict[str, str], say: Callable[[str], None],
                 wake: Callable[[], None]) -> None:
        self.db, self.fleet, self.study_id, self.say = db, fleet, study_id, say
        self.gpus_per_trial, self.labels = gpus_per_trial, labels
        # the machines with the study's labels: the fleet file does not change during a run (read once, not per pass)
        self._labelled = {m.name for m in fleet.machines if matches_labels(m, labels)}
        self.gate = HealthGate(fleet, launcher_for, multi_gpu=gpus_per_trial > 1, wake=wake)
        self.guard = GpuGuard(fleet, launcher_for)
        self.board = RefusalBoard()
        self._busy: dict[str, Refusal] = {}  # the last screen's refusals
        self._verdicts: dict[str, tuple[bool, str | None]] = {}  # machine -> its last check's (ok, reason) reported

    # ---- health checks ------------------------------------------------------------------------------------------
    def admit(self, machine: Machine, info: MachineInfo) -> None:
        """Check a reachable machine before it takes trials (its first, or after it came back)."""
        if machine.name not in self._labelled:
            return
        result = self.gate.admit(machine, info)
        if result is None:
            what = "GPUs, a matrix product on each" if info.gpus else "torch, a matrix product on the CPU"
            self.say(f"machine {machine.name}: pre-flight health check started ({what}"
                     + (", an all-reduce" if self.gate.multi_gpu and info.gpu_count > 1 and info.gpus else "") + ")")
        else:
            self._record([result])

    def after_failure(self, slot: Slot, info: MachineInfo | None, exit_reason: str) -> None:
        if exit_reason not in SUSPECT_EXITS or info is None or not info.reachable:
            return
        if self.gate.after_failure(self.fleet.machine(slot.machine), info, slot):
            self.say(f"machine {slot.machine} {slot.label}: health check after the failure ({exit_reason}); the set "
                     "takes no trial until it passes")

    def collect(self, wait_s: float | None = 0.0) -> bool:
        """Apply the checks that finished; True when there were any."""
        results = self.gate.results(wait_s)
        self._record(results)
        return bool(results)

    def _record(self, results: list[CheckResult]) -> None:
        fresh = []
        for result in results:  # a sick machine checked again in the background is reported once, not every time
            verdict = (result.ok, result.reason)
            if result.slot is None and not result.ok and self._verdicts.get(result.machine) == verdict:
                continue
            if result.slot is None:
                self._verdicts[result.machine] = verdict
            fresh.append(result)
        results = fresh
        if not results:
            return
        now = datetime.now(timezone.utc)
        with self.db.session() as s:
            rows = {r.name: r for r in s.scalars(select(MachineRow).where(
                MachineRow.name.in_({r.machine for r in results})))}
            for result in results:
                row = rows.get(result.machine)
                verdict = "skipped" if result.skipped else "passed" if result.ok else "sick"
                message = result.skipped or (f"{result.reason} (fix: {result.fix})" if not result.ok
                                             else _figures(result))
                s.add(EventRow(at=now, study_id=self.study_id, machine=result.machine, kind="machine.health",
                               new=verdict, message=f"{result.slot.label}: {message}" if result.slot else message))
                if row is None:
                    continue
                if not result.ok and row.state not in ("down", "sick"):
                    s.add(EventRow(at=now, machine=row.name, kind="machine.state", old=row.state, new="sick",
                                   message=message))
                    row.state, row.note = "sick", message
                elif not result.ok:
                    row.note = message if row.state == "sick" else row.note
                elif result.slot is None and row.state == "sick":
                    s.add(EventRow(at=now, machine=row.name, kind="machine.state", old="sick", new="idle",
                                   message="passed its health check"))
                    row.state, row.note = "idle", None
        for result in results:
            if result.skipped:
                self.say(f"machine {result.machine}: health check program skipped: {result.skipped}")
            elif result.ok:
                self.say(f"{result.what} passed its health check in {result.seconds:.1f} s ({_figures(result)})")
            else:
                self.say(f"{result.what} failed its health check and is sick: {result.reason} (fix: {result.fix}); "
                         "it gets no trials until it passes")

    # ---- dispatch -----------------------------------------------------------------------------------------------
    def blocked(self) -> set[str]:
        return self.gate.blocked()

    def pending(self) -> bool:
        return self.gate.pending()

    def screen(self, candidates: list[Slot], infos: dict[str, MachineInfo], wanted: int,
               avoid: set[str] = frozenset()) -> list[Slot]:
        """Of the free slots: those not held by a check and whose GPUs nothing holds, machines in `avoid` last."""
        if wanted <= 0:
            return []
        held = self.gate.held_slots()
        kept, self._busy = self.guard.screen([s for s in candidates if s not in held], infos)
        if avoid:
            kept.sort(key=lambda slot: slot.machine in avoid)  # stable: the fleet's interleaving stays
        return kept[:wanted]

    # ---- refusals -----------------------------------------------------------------------------------------------
    def update(self, infos: dict[str, MachineInfo], rows: dict[str, tuple[str, str | None, bool]],
               slots: list[Slot]) -> None:
        """Work out every refusal now, report and record those that changed. `rows`: name -> (state, note, drain)
        of machines the database has down, sick or drained."""
        with_slots = {s.machine for s in slots}
        gate_states = self.gate.state
        refusals: list[Refusal] = []
        for machine in self.fleet.machines:
            name, info = machine.name, infos.get(machine.name)
            state, note, drain = rows.get(name, ("idle", None, False))
            if name not in self._labelled:
                refusals.append(Refusal(name, "labels", f"it lacks resources.labels {self.labels} of the study",
                                        "add the labels to the machine in the fleet file, or change resources.labels"))
                continue
            if state == "down" or (info is not None and not info.reachable):
                refusals.append(probe_refusal(name, note if state == "down" and note else info and info.error))
            elif info is not None and name not in with_slots and self.gpus_per_trial > info.gpu_count:
                refusals.append(Refusal(name, "too_few_gpus", f"it has {info.gpu_count} GPU(s), the study asks "
                                        f"resources.gpus = {self.gpus_per_trial} per trial",
                                        "lower resources.gpus in the study, or use machines with more GPUs"))
            if drain:
                refusals.append(Refusal(name, "drained", "`orch fleet drain` set it draining",
                                        f"`orch fleet undrain {name}` when it should take trials again"))
            if state == "sick" and gate_states.get(name) not in ("sick", "checking"):  # marked by another controller
                reason, fix = split_fix(note or "its health check failed", "repair the machine")
                refusals.append(Refusal(name, "sick", reason, fix))
        refusals += self.gate.refusals()
        refusals += self._busy.values()
        added, cleared = self.board.update(refusals)
        if not added and not cleared:
            return
        now = datetime.now(timezone.utc)
        with self.db.session() as s:
            for r in added:
                s.add(EventRow(at=now, study_id=self.study_id, machine=r.machine, kind=REFUSED, new=r.kind,
                               message=f"{r.reason} (fix: {r.fix})"))
            for r in cleared:
                s.add(EventRow(at=now, study_id=self.study_id, machine=r.machine, kind=ACCEPTED, old=r.kind))
        for r in added:
            if r.kind != "checking":  # announced when the check starts
                self.say(r.line())
        for r in cleared:
            if r.kind not in ("checking", "sick", "labels"):  # the check's verdict is reported by itself
                self.say(f"machine {r.machine} takes trials again (no longer {r.kind})")

    def lines(self) -> list[str]:
        return [r.line() for rs in self.board.by_machine().values() for r in rs]

    def no_capacity_message(self) -> str:
        by_kind: dict[str, list[str]] = {}
        for (machine, kind) in sorted(self.board.current):
            by_kind.setdefault("down or draining" if kind in DOWN_KINDS else kind.replace("_", " "), []).append(machine)
        groups = "; ".join(f"{kind}: {', '.join(dict.fromkeys(names))}" for kind, names in by_kind.items()) or \
            "down or draining: none"
        details = "".join(f"\n  {line}" for line in self.lines())
        return (f"no machine of the fleet can take a trial now ({groups}) (fix: bring the machines back, see "
                f"`orch fleet status`; `orch study run` then resumes){details}")

    def close(self) -> None:
        self.gate.close()
        self.guard.close()


def _figures(result: CheckResult) -> str:
    details = result.details or {}
    parts = []
    for device in details.get("devices", []):
        if "bf16_tflops" in device:
            parts.append(f"{device['device']} {device['bf16_tflops']} TFLOP/s bf16")
    if not parts and details.get("devices"):
        parts.append(f"{len(details['devices'])} device(s), matrix products right")
    reduce = details.get("allreduce")
    if reduce:
        parts.append(f"all-reduce over {reduce['world']} in {reduce['seconds']} s"
                     + (f", {reduce['busbw_gbps']} GB/s bus" if "busbw_gbps" in reduce else ""))
    return ", ".join(parts) or "no figures"
