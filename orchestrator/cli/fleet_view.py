"""`orch fleet status [--watch] [--json]`: every machine of the fleet, probed now, with what runs on it.

Per machine: reachable (a probe now, all machines at once, each bounded by `probe_timeout_s`), launcher, GPU model
and count with per-GPU utilisation / memory / temperature (nvidia-smi, through SSH for ssh machines; "no GPU" when
there is none), the trials running there (elapsed time, latest val_loss), the last heartbeat the controller
recorded, and the state:

  down       the probe failed (unreachable, refused host key, no answer in time, a Slurm node down)
  sick       a controller's health check failed there (liveness/health_check.py): no trials until one passes
  draining   `orch fleet drain` and trials still running there
  drained    `orch fleet drain` and nothing running
             (draining and drained also name a machine its resource manager drained: Slurm, with its reason)
  gpus_busy  processes no running trial accounts for hold some of its GPUs (nvidia-smi, read now)
  busy       trials running
  idle       reachable, nothing running

Each machine that gets no trials (or some of its GPUs none) has `refusals`: the kind, the reason and the fix.
`warm` is its cache and data state as its newest trial's entry program reported it (orchestrator/warm/report.py):
the cache key, warm or cold, its files and bytes, older keys kept, the study's data files and their check.

`--watch` redraws the view in place (rich Live) every `--interval` seconds on a terminal; piped, it prints one
frame after another (`--json`: one JSON object a line). `--count N` stops after N frames; Ctrl-C exits cleanly.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Callable, TextIO

from sqlalchemy import func, select

from db import Database, MachineRow, TrialRow

from ..config.fleet import Fleet, Machine
from ..fleet.health import HealthChecker
from ..launchers.registry import launcher_class
from ..launchers.base import Launcher, MachineInfo, Slot
from ..liveness.gpu_guard import busy_refusal, gpu_processes
from ..liveness.refusals import Refusal, probe_refusal, split_fix
from ..warm.report import machine_states
from ..warm.report import render as render_warm
from .queue_view import queue_view, render_queue
from .status import _age_s, _running_trials, _table

PROBE_TIMEOUT_S = 5.0


class FleetProber:
    """Probes every machine of a fleet in parallel, reusing launchers (and SSH connections) across refreshes."""

    def __init__(self, fleet: Fleet, probe_timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.fleet, self.timeout_s = fleet, probe_timeout_s
        self.launchers: dict[str, Launcher] = {}
        for machine in fleet.machines:
            if machine.launcher not in self.launchers:
                self.launchers[machine.launcher] = launcher_class(machine.launcher).for_status(probe_timeout_s)
        self.checker = HealthChecker(self._probe, max_workers=max(1, min(32, len(fleet.machines))))
        self.probe_ms: dict[str, int] = {}  # how long each machine's last finished probe took
        self.processes: dict[str, list] = {}  # per machine whose nvidia-smi lists GPUs: the processes on them

    def _probe(self, machine: Machine) -> MachineInfo:
        started = time.monotonic()
        launcher = self.launchers[machine.launcher]
        info = launcher.probe(machine)
        self.probe_ms[machine.name] = round((time.monotonic() - started) * 1000)
        found = gpu_processes(launcher, machine, self.timeout_s) if info.reachable and info.gpus else None
        self.processes[machine.name] = found or []
        return info

    def probe_all(self) -> dict[str, MachineInfo]:
        """One MachineInfo per machine; a probe still going after the timeout counts as unreachable for this frame
        (it is not started again while it runs)."""
        self.checker.submit(self.fleet.machines)
        infos = {m.name: info for m, info in self.checker.results(wait_s=self.timeout_s + 1)}
        for machine in self.fleet.machines:
            infos.setdefault(machine.name, MachineInfo(reachable=False,
                                                       error=f"no answer within {self.timeout_s:g} s"))
        return infos

    def close(self) -> None:
        self.checker.close()
        for launcher in self.launchers.values():
            launcher.close()


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")


def _state(reachable: bool, drain: bool, running: list, sick: bool = False, foreign: bool = False,
           node_state: str | None = None) -> str:
    if not reachable:
        return node_state or "down"  # a resource manager's word for it (a drained Slurm node), else down
    if sick:
        return "sick"
    if drain:
        return "draining" if running else "drained"
    if foreign:
        return "gpus_busy"
    return "busy" if running else "idle"


def _refusals(machine: Machine, info: MachineInfo, row: MachineRow | None, foreign: list) -> list[Refusal]:
    """Why the machine gets no trials now (or some of its GPUs none)."""
    out = []
    if not info.reachable:
        refusal = probe_refusal(machine.name, info.error)
        if info.node_state in ("drained", "draining"):  # drained by its resource manager (Capability.NODE_STATE)
            refusal = Refusal(machine.name, "drained", refusal.reason, refusal.fix)
        out.append(refusal)
    elif row is not None and row.state == "sick":
        out.append(Refusal(machine.name, "sick", *split_fix(row.note or "its health check failed",
                                                            "repair the machine; controllers check it again")))
    if row is not None and row.drain:
        out.append(Refusal(machine.name, "drained", "`orch fleet drain` set it draining",
                           f"`orch fleet undrain {machine.name}` when it should take trials again"))
    if foreign:
        gpus = sorted({p.gpu for p in foreign})
        out.append(busy_refusal(machine.name, foreign, [Slot(machine.name, g, gpu_ids=(g,)) for g in gpus]))
    return out


def _trial_gpus(running: list) -> set[int]:
    """The GPUs the machine's running trials were given (their slot labels, `gpu:0,1`)."""
    out = set()
    for r in running:
        label = r.get("slot") or ""
        if label.startswith("gpu:"):
            out.update(int(g) for g in label[4:].split(",") if g.isdigit())
    return out


def fleet_status(db: Database, fleet: Fleet, prober: FleetProber | None = None) -> dict:
    """The view as a plain dict (what --json prints)."""
    own = prober is None
    prober = prober or FleetProber(fleet)
    try:
        infos = prober.probe_all()
    finally:
        if own:
            prober.close()
    names = [m.name for m in fleet.machines]
    with db.session() as s:
        rows = {m.name: m for m in s.scalars(select(MachineRow).where(MachineRow.name.in_(names)))}
        beats = dict(s.execute(select(TrialRow.machine, func.max(TrialRow.heartbeat_at)).where(
            TrialRow.machine.in_(names), TrialRow.state == "running").group_by(TrialRow.machine)).all())
    running = _running_trials(db, TrialRow.machine.in_(names))
    warm_states = machine_states(db, names)  # caches and data as each machine's newest trial found them
    machines = []
    for machine in fleet.machines:
        info, row = infos[machine.name], rows.get(machine.name)
        busy = [{k: v for k, v in r.items() if k != "machine"} for r in running if r["machine"] == machine.name]
        drain = bool(row.drain) if row is not None else False
        seen = [t for t in (beats.get(machine.name), row.last_seen if row is not None else None) if t is not None]
        last = max(seen, key=lambda t: t if t.tzinfo else t.replace(tzinfo=timezone.utc)) if seen else None
        processes = prober.processes.get(machine.name, []) if info.reachable else []
        ours = _trial_gpus(busy)
        foreign = [p for p in processes if p.gpu not in ours]
        sick = info.reachable and row is not None and row.state == "sick"
        machines.append({
            "name": machine.name, "host": machine.host, "launcher": machine.launcher, "reachable": info.reachable,
            "state": _state(info.reachable, drain, busy, sick, bool(foreign), info.node_state), "drain": drain,
            "drain_reason": row.drain_reason if drain else None,  # `orch fleet drain --reason`
            "controller_state": row.state if row is not None else None,
            "gpu_count": info.gpu_count, "gpu_type": info.gpu_type if info.gpu_count else "no GPU",
            "gpus": info.gpus, "cpu_count": info.cpu_count,
            "cpu_slots": machine.resolved_cpu_slots(info.cpu_count) if info.reachable and not info.gpu_count else None,
            "running": busy, "last_heartbeat": _iso(last), "heartbeat_age_s": _age_s(last),
            "probe_ms": prober.probe_ms.get(machine.name), "error": info.error,
            "gpu_processes": [{"gpu": p.gpu, "pid": p.pid, "name": p.name, "used_mib": p.used_mib,
                               "foreign": p.gpu not in ours} for p in processes],
            "refusals": [{k: v for k, v in r.as_dict().items() if k != "machine"}
                         for r in _refusals(machine, info, row, foreign)],
            "warm": warm_states.get(machine.name),
        })
    return {"fleet": fleet.source, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machines": machines, "queue": queue_view(db, fleet)}  # `orch fleet queue` under the machines


def _fmt(value, spec: str = "g", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def render_fleet_status(view: dict) -> str:
    rows = []
    for m in view["machines"]:
        if not m["reachable"]:
            gpus = "?"
        elif m["gpu_count"]:
            gpus = f"{m['gpu_count']} x {m['gpu_type']}"
        else:
            gpus = f"no GPU ({m['cpu_slots']} CPU slots, {m['cpu_count'] or '?'} cores)"
        trials = ", ".join(f"{r['study']}#{r['number']} {r['slot']} {_fmt(r['elapsed_s'], '.0f', 's')} "
                           f"val_loss {_fmt(r['val_loss'], '.4f')}" for r in m["running"]) or "-"
        beat = "-" if m["heartbeat_age_s"] is None else f"{m['heartbeat_age_s']:.0f}s ago"
        rows.append([m["name"], m["launcher"], m["state"], "yes" if m["reachable"] else "no", gpus, trials, beat])
    out = _table(["machine", "launcher", "state", "reachable", "GPUs", "running (elapsed, latest val_loss)",
                  "heartbeat"], rows)
    for m in view["machines"]:
        if m.get("drain_reason"):
            out += f"\n  {m['name']} drained: {m['drain_reason']}"
        for g in m["gpus"]:
            out += (f"\n  {m['name']} gpu{g['index']}: {g['name']} util {_fmt(g['utilization_pct'], '.0f', '%')} "
                    f"mem {_fmt(g['memory_used_mib'], '.0f')}/{_fmt(g['memory_total_mib'], '.0f')} MiB "
                    f"temp {_fmt(g['temperature_c'], '.0f', 'C')}")
        for r in m.get("refusals", []):
            out += f"\n  {m['name']} gets no trials ({r['kind']}): {r['reason']} (fix: {r['fix']})"
        if m.get("warm"):
            out += "\n" + render_warm(m["name"], m["warm"])
    if view.get("queue"):
        out += "\n\n" + render_queue(view["queue"])
    return f"fleet: {view['fleet']} at {view['at']}\n{out}"


def watch(db: Database, fleet: Fleet, *, interval_s: float, count: int | None, as_json: bool,
          out: TextIO | None = None, probe_timeout_s: float = PROBE_TIMEOUT_S) -> int:
    """Refresh the view every `interval_s` until `count` frames (None: until Ctrl-C); returns the frames shown."""
    out = out or sys.stdout
    prober = FleetProber(fleet, probe_timeout_s)
    shown = 0
    live = None
    try:
        if out.isatty() and not as_json:
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            live = Live(console=Console(file=out), auto_refresh=False, transient=False)
            live.start()
            show: Callable[[dict], None] = lambda view: live.update(Text(render_fleet_status(view)), refresh=True)
        elif as_json:
            show = lambda view: print(json.dumps(view, default=str), file=out, flush=True)  # noqa: E731
        else:
            show = lambda view: print(render_fleet_status(view) + "\n", file=out, flush=True)  # noqa: E731
        while count is None or shown < count:
            began = time.monotonic()
            show(fleet_status(db, fleet, prober))
            shown += 1
            if count is not None and shown >= count:
                break
            time.sleep(max(0.0, interval_s - (time.monotonic() - began)))  # the refresh period, not a wait on state
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
        prober.close()
    return shown


__all__ = ["FleetProber", "fleet_status", "render_fleet_status", "watch"]
