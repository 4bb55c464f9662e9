"""A simulated fleet for bench/dispatch.py: a launcher behind `orchestrator.launchers.base.Launcher` whose jobs
are timers, not processes.

Each job "runs" for a fixed duration (the benchmark draws it, 0.5-2 s) and pushes the lines our trainer prints
(docs/contracts.md: a start object, human and `@@metrics` val lines, the final object) into the controller's
queue at the times a real run would, then its exit. One thread serves every job from a heap of due times, so
256 machines cost no more than a few timers. The launcher records, per job, the machine, when `start` was
called and the job's duration (its machine is free at start + duration, whenever the controller hears of it):
the raw data of the utilisation and free-to-start figures. Events go into the controller's queue as a real
launcher's pump threads put them: when the (bounded) queue is full, the put waits.
"""

from __future__ import annotations

import heapq
import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.fleet import Machine
from orchestrator.jobs import JobSpec
from orchestrator.launchers.base import Event, ExitEvent, JobHandle, Launcher, LineEvent, MachineInfo, Slot
from orchestrator.launchers.local import LocalMachine

GPU_NAME = "NVIDIA H100 80GB HBM3 (simulated)"
VAL_POINTS = 4  # val lines per job, evenly spread over its run


def job_lines(trial: int, duration_s: float, steps: int = 400) -> list[tuple[float, list[str]]]:
    """(offset in seconds, lines) of one fake run, in the orch log format; the final line carries
    train_time_ms = the run's duration, so the objective a study reads back is the simulated time."""
    loss0, loss1 = 4.2, 3.2 + 0.1 * ((trial * 7919) % 100) / 100  # a deterministic spread around a 3.28 target
    out = [(0.0, ["@@metrics " + json.dumps({"event": "start", "world_size": 8, "gpu_name": GPU_NAME,
                                              "versions": {"python": "sim"}})])]
    for k in range(1, VAL_POINTS + 1):
        step, at = steps * k // VAL_POINTS, duration_s * k / VAL_POINTS
        loss = loss0 + (loss1 - loss0) * k / VAL_POINTS
        ms = int(at * 1000)
        out.append((at, [f"step:{step}/{steps} val_loss:{loss:.4f} train_time:{ms}ms step_avg:{ms / step:.2f}ms",
                         "@@metrics " + json.dumps({"event": "val", "step": step, "total_steps": steps, "val_loss": loss,
                                                    "train_time_ms": ms, "step_avg_ms": ms / step})]))
    out[-1][1].append("@@metrics " + json.dumps({
        "event": "final", "step": steps, "total_steps": steps, "val_loss": loss1, "train_time_ms": int(duration_s * 1000),
        "step_avg_ms": duration_s * 1000 / steps, "tokens": steps * 524288, "peak_memory_mib": 61000,
        "exit_reason": "completed", "world_size": 8, "gpu_name": GPU_NAME, "versions": {"python": "sim"}}))
    return out


@dataclass
class JobRecord:
    machine: str
    started: float  # time.monotonic() when the controller called start()
    duration: float  # the job's own run time: its machine is free again at started + duration
    delivered: float | None = None  # when its exit event went into the controller's queue (later if the queue was full)
    cancelled: bool = False

    @property
    def ended(self) -> float:
        return self.started + self.duration


class FakeJob(JobHandle):
    def __init__(self, launcher: "FakeFleetLauncher", key: int, workdir: Path, command: list[str]) -> None:
        self.launcher, self.key, self.workdir, self.command = launcher, key, workdir, command
        self.log_path = workdir / "train.log"  # never written: the lines go to the controller only

    def cancel(self, reason: str) -> None:
        self.launcher.cancel(self.key)


class FakeFleetLauncher(Launcher):
    """`durations[trial % len(durations)]` is how long trial number `trial` runs."""

    name = "fake"
    machine_type = LocalMachine  # bench/dispatch.py's fleet declares its simulated machines `launcher: local`

    def __init__(self, durations: list[float], gpus_per_machine: int = 8) -> None:
        self.durations = durations
        self.gpus_per_machine = gpus_per_machine
        self.records: dict[int, JobRecord] = {}
        self._heap: list[tuple[float, int, int, list[str] | None, "queue.Queue[Event]"]] = []
        self._seq = 0
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fake-fleet")
        self._thread.start()

    def probe(self, machine: Machine) -> MachineInfo:
        return MachineInfo(reachable=True, gpu_count=self.gpus_per_machine, gpu_type=GPU_NAME, driver_version="sim")

    def start(self, job: JobSpec, machine: Machine, slot: Slot, workdir: Path,
              events: "queue.Queue[Event]") -> FakeJob:
        now = time.monotonic()
        duration = self.durations[job.trial % len(self.durations)]
        self.records[job.trial] = JobRecord(machine=machine.name, started=now, duration=duration)
        with self._wake:
            for offset, lines in job_lines(job.trial, duration):
                self._push(now + offset, job.trial, lines, events)
            self._push(now + duration, job.trial, None, events)  # None: the exit
            self._wake.notify()
        return FakeJob(self, job.trial, workdir, list(job.argv))

    def cancel(self, key: int) -> None:
        record = self.records.get(key)
        if record is None or record.delivered is not None or record.cancelled:
            return
        record.cancelled = True
        with self._wake:
            events = next((item[4] for item in self._heap if item[2] == key), None)
            self._heap = [item for item in self._heap if item[2] != key]
            heapq.heapify(self._heap)
            if events is not None:
                self._push(time.monotonic(), key, None, events)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)

    def _push(self, due: float, key: int, lines: list[str] | None, events: "queue.Queue[Event]") -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key, lines, events))

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._wake.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._closed:
                    return
                due = []
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap))
            for _, _, key, lines, events in due:
                if lines is None:
                    record = self.records[key]
                    record.delivered = time.monotonic()
                    events.put(ExitEvent(key, -15 if record.cancelled else 0))
                else:
                    for line in lines:
                        events.put(LineEvent(key, line + "\n"))
