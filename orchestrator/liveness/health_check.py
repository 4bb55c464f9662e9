"""The pre-flight health check of a machine, and the gate that keeps trials off machines that have not passed it.

A machine is checked before its first trial of a controller's run, when it comes back after being down, and after
a trial failed on it (crashed, hung, ended without its final line, could not start): then only the failed trial's
GPU set is checked, and only that set waits for the result. The check has two parts:

1. from its probe (nvidia-smi, no job): as many GPUs listed as `gpus:` declares, each named with `gpu_type:`;
2. `check_program.py`, run on the machine through its launcher like a trial (container, CUDA_VISIBLE_DEVICES, log):
   torch sees the GPUs, a matrix product is right on each, and for studies of multi-GPU trials an NCCL all-reduce
   over them finishes within `health_check.allreduce_timeout_s`. It runs where nvidia-smi lists GPUs
   (`health_check.run: auto`), everywhere (`always`: on a CPU machine it checks torch and a CPU product) or nowhere
   (`never`); a machine where it does not run passes on part 1 alone, and the reason is stated.

A machine that fails is `sick` with the reason and gets no trials until a later check passes; the controller checks
sick machines again in the background (every `health_check_s`, as it probes down machines). The checks run in
worker threads; `results()` hands back those that finished.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config.errors import OrchError
from ..config.fleet import Fleet, Machine
from ..records import JobSpec
from ..launchers.base import ExitEvent, Launcher, LineEvent, MachineInfo, Slot
from .refusals import Refusal

PROGRAM = Path(__file__).with_name("check_program.py")
MARK = "@@health "
CHECK_STUDY = ".orch-health"  # the checks' directory under a machine's workdir (locally and on the machine)
CPU_MATMUL_SIZE = 1024  # a CPU multiplies a smaller product: the point is that torch works, not its speed
CANCEL_WAIT_S = 20.0  # after the bound: how long the cancelled program has to end


@dataclass
class CheckResult:
    machine: str
    ok: bool
    slot: Slot | None = None  # None: the whole machine (pre-flight); else the GPU set checked after a failure
    reason: str | None = None  # why it failed
    fix: str | None = None
    skipped: str | None = None  # why the program did not run (the machine passed on its nvidia-smi listing)
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def what(self) -> str:
        return f"machine {self.machine}" + (f" {self.slot.label}" if self.slot is not None else "")


def expectation_problem(machine: Machine, info: MachineInfo) -> str | None:
    """What nvidia-smi lists against what the fleet file declares (nothing to compare when it lists no GPU)."""
    rows = info.gpus
    if not rows:
        return None
    if isinstance(machine.gpus, int) and len(rows) < machine.gpus:
        return f"nvidia-smi lists {len(rows)} GPU(s), the fleet file says gpus: {machine.gpus}"
    if machine.gpu_type:
        wrong = [f"gpu{g['index']} is {g['name']!r}" for g in rows if machine.gpu_type.lower() not in g["name"].lower()]
        if wrong:
            return f"{', '.join(wrong)}; the fleet file says gpu_type: {machine.gpu_type!r}"
    return None


def program_skip_reason(machine: Machine, info: MachineInfo) -> str | None:
    """Why the check program does not run on this machine (None: it runs)."""
    run = machine.health_check.run
    if run == "never":
        return "health_check.run is `never` in the fleet file"
    if run == "auto" and not info.gpus:
        return ("nvidia-smi lists no GPU on it (health_check.run `auto` checks GPU machines; `always` also runs the "
                "check on CPU machines)")
    return None


def _check_argv(machine: Machine, gpu_ids: tuple[int, ...], allreduce: bool) -> list[str]:
    spec = machine.health_check
    python = sys.executable if spec.python == "{python}" else spec.python
    argv = [python, "-c", PROGRAM.read_text(encoding="utf-8")]
    if gpu_ids:
        argv += ["--device", "cuda", "--expect-count", str(len(gpu_ids)), "--size", str(spec.matmul_size)]
        if machine.gpu_type:
            argv += ["--expect-model", machine.gpu_type]
    else:
        argv += ["--device", "cpu", "--size", str(min(spec.matmul_size, CPU_MATMUL_SIZE))]
    if allreduce and len(gpu_ids) > 1:
        argv += ["--allreduce", "--allreduce-timeout", f"{spec.allreduce_timeout_s:g}"]
    return argv


def run_program(launcher: Launcher, machine: Machine, gpu_ids: tuple[int, ...], *, allreduce: bool,
                slot: Slot | None = None) -> CheckResult:
    """Run check_program.py on `gpu_ids` of the machine (none: its CPU) through its launcher, within
    `health_check.timeout_s`; the program's own report decides."""
    spec = machine.health_check
    stamp = time.time_ns() // 1000 % 10**12  # names the check's directories (the program's log is kept there)
    job = JobSpec(study=CHECK_STUDY, trial=stamp, argv=_check_argv(machine, gpu_ids, allreduce), env={},
                  gpus=len(gpu_ids), timeout_s=spec.timeout_s)
    workdir = (Path(machine.workdir) / CHECK_STUDY / f"{machine.name}-{stamp}").resolve()
    run_slot = Slot(machine.name, -1, gpu_ids=gpu_ids)
    began = time.monotonic()
    result = CheckResult(machine.name, ok=False, slot=slot)
    fix_repair = (f"repair the machine (driver, GPUs, NCCL) or correct gpus:/gpu_type: in the fleet file; it is checked "
                  f"again in the background, and its log is under {CHECK_STUDY}/ in the machine's workdir")
    events: "queue.Queue" = queue.Queue()
    try:
        handle = launcher.start(job, machine, run_slot, workdir, events)
    except (OrchError, OSError) as exc:
        result.reason = f"the health check could not start: {exc}"
        result.fix = (f"if the interpreter is missing, set health_check.python in the fleet file to one with torch on "
                      f"the machine; else {fix_repair}")
        return result
    deadline = began + spec.timeout_s
    report, tail, exit_event, cancelled = None, [], None, False
    while exit_event is None:
        try:
            event = events.get(timeout=max(0.0, deadline - time.monotonic()) if not cancelled else CANCEL_WAIT_S)
        except queue.Empty:
            if cancelled:
                break
            handle.cancel("health check timeout")
            cancelled = True
            continue
        if isinstance(event, LineEvent):
            if event.line.startswith(MARK):
                try:
                    report = json.loads(event.line[len(MARK):])
                except ValueError:
                    pass
            elif event.line.strip():
                tail = (tail + [event.line.strip()])[-5:]
        elif isinstance(event, ExitEvent):
            exit_event = event
    result.seconds = round(time.monotonic() - began, 2)
    if cancelled:
        result.reason = f"the health check did not finish within health_check.timeout_s = {spec.timeout_s:g} s"
        result.fix = fix_repair + " (raise health_check.timeout_s if the machine is only slow to start torch)"
    elif report is None:
        status = f"exit status {exit_event.returncode}" if exit_event.returncode is not None else exit_event.error
        result.reason = (f"the health check program gave no report ({status}): {' | '.join(tail)[-400:] or 'no output'}")
        result.fix = ("set health_check.python in the fleet file to an interpreter with torch on the machine (or "
                      "health_check.run: never to skip the check)")
    else:
        result.details = report
        result.ok = bool(report.get("ok"))
        if not result.ok:
            result.reason, result.fix = "; ".join(report.get("problems") or ["the check failed"]), fix_repair
    return result


def _safely(check: Callable[[], CheckResult], machine: str, slot: Slot | None) -> CheckResult:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a check that breaks leaves the machine unproven, not the controller dead
        return CheckResult(machine, ok=False, slot=slot, reason=f"the health check failed to run: "
                           f"{type(exc).__name__}: {exc}", fix="see the controller's log; the check is tried again")


class HealthGate:
    """Which machines (and GPU sets) have passed their check, for one controller run."""

    def __init__(self, fleet: Fleet, launcher_for: Callable[[Machine], Launcher], *, multi_gpu: bool,
                 wake: Callable[[], None] = lambda: None, max_workers: int = 8) -> None:
        self.fleet, self.launcher_for, self.multi_gpu, self.wake = fleet, launcher_for, multi_gpu, wake
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="health-check")
        self._inflight: dict[str | Slot, Future] = {}
        self.state: dict[str, str] = {}  # machine -> "checking" | "sick" | "ok"
        self.sick_reason: dict[str, tuple[str, str]] = {}  # machine -> (reason, fix)

    def _submit(self, key: str | Slot, machine: Machine, check: Callable[[], CheckResult]) -> None:
        if key in self._inflight:
            return
        slot = key if isinstance(key, Slot) else None
        future = self._pool.submit(_safely, check, machine.name, slot)
        future.add_done_callback(lambda _: self.wake())
        self._inflight[key] = future

    def admit(self, machine: Machine, info: MachineInfo) -> CheckResult | None:
        """Check a reachable machine before it takes trials. A result now when nothing has to run (it passed on its
        nvidia-smi listing, or failed on it); None when the program was started (the machine waits for it)."""
        problem = expectation_problem(machine, info)
        if problem:
            result = CheckResult(machine.name, ok=False, reason=problem,
                                 fix="check the machine's GPUs (nvidia-smi) and its gpus:/gpu_type: in the fleet file; "
                                     "it is checked again in the background")
            self._apply(result)
            return result
        skip = program_skip_reason(machine, info)
        if skip:
            result = CheckResult(machine.name, ok=True, skipped=skip)
            self._apply(result)
            return result
        gpu_ids = tuple(range(info.gpu_count)) if info.gpus else ()
        launcher = self.launcher_for(machine)
        if self.state.get(machine.name) != "sick":
            self.state[machine.name] = "checking"
        self._submit(machine.name, machine, lambda: run_program(launcher, machine, gpu_ids, allreduce=self.multi_gpu))
        return None

    def after_failure(self, machine: Machine, info: MachineInfo, slot: Slot) -> bool:
        """Check the GPU set a trial failed on before it takes another; True when a check was started (the set waits
        for it), False when the machine's check does not run the program."""
        if program_skip_reason(machine, info) is not None or self.state.get(machine.name) == "sick":
            return False
        launcher = self.launcher_for(machine)
        gpu_ids = slot.gpu_ids if info.gpus else ()
        self._submit(slot, machine, lambda: run_program(launcher, machine, gpu_ids, allreduce=self.multi_gpu,
                                                        slot=slot))
        return True

    def blocked(self) -> set[str]:
        return {name for name, state in self.state.items() if state in ("checking", "sick")}

    def held_slots(self) -> set[Slot]:
        return {key for key in self._inflight if isinstance(key, Slot)}

    def checking(self, name: str) -> bool:
        return name in self._inflight

    def pending(self) -> bool:
        return bool(self._inflight)

    def refusals(self) -> list[Refusal]:
        out = []
        for name, state in sorted(self.state.items()):
            if state == "sick":
                out.append(Refusal(name, "sick", *self.sick_reason[name]))
            elif state == "checking":
                out.append(Refusal(name, "checking", "its pre-flight health check is running",
                                   "none needed: it takes trials once the check passes"))
        return out

    def results(self, wait_s: float | None = 0.0) -> list[CheckResult]:
        """The checks that finished (waiting up to `wait_s` for the first of them; None: as long as it takes)."""
        if wait_s != 0.0 and self._inflight:
            wait(list(self._inflight.values()), timeout=wait_s, return_when="FIRST_COMPLETED")
        done = [(key, f) for key, f in self._inflight.items() if f.done()]
        out = []
        for key, future in done:
            del self._inflight[key]
            result = future.result()
            self._apply(result)
            out.append(result)
        return out

    def _apply(self, result: CheckResult) -> None:
        if result.ok:
            if result.slot is None:
                self.state[result.machine] = "ok"
                self.sick_reason.pop(result.machine, None)
        else:
            self.state[result.machine] = "sick"
            self.sick_reason[result.machine] = (result.reason or "the health check failed",
                                                result.fix or "repair the machine")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
