"""`orch fleet queue [--json]`: the fleet's queue across studies (orchestrator/claims/view.py) and, for machines whose
resource manager queues jobs itself (Capability.QUEUES_JOBS: Slurm), that manager's queue on them, in one view.

Text: one line per claimed slot (machine, slot, study#trial, since), the studies with their priority, GPUs held,
recent use and share, the waiting ones with what they wait for, the next to be served, then the resource manager's
jobs. `orch fleet status` shows the same view under its machines."""

from __future__ import annotations

from ..claims import fleet_queue
from ..config.fleet import Capability, Fleet
from ..launchers.registry import launcher_class
from .status import _table


def manager_queue(fleet: Fleet, timeout_s: float = 10.0) -> list[dict]:
    """The jobs the fleet's resource managers queue on its machines; a manager that does not answer is one row
    saying so."""
    out = []
    by_launcher: dict[str, list] = {}
    for machine in fleet.machines:
        if machine.has(Capability.QUEUES_JOBS):
            by_launcher.setdefault(machine.launcher, []).append(machine)
    for name, machines in by_launcher.items():
        launcher = launcher_class(name).for_status(timeout_s)
        try:
            for job in launcher.queue(machines):
                out.append({"launcher": name, **job})
        except Exception as exc:  # noqa: BLE001 - the view shows what it can
            out.append({"launcher": name, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            launcher.close()
    return out


def queue_view(db, fleet: Fleet) -> dict:
    view = fleet_queue(db)
    view["manager_queue"] = manager_queue(fleet)
    return view


def render_queue(view: dict) -> str:
    lines = [f"fleet queue at {view['at']}"]
    if view["slots"]:
        rows = [[e["machine"], e["slot"] or ",".join(e["units"]),
                 f"{e['study']}#{e['trial']}" if e["trial"] is not None else f"{e['study']} (starting)",
                 e["since"], "gone: checked before it is given again" if e["controller_gone"] else "live"]
                for e in view["slots"]]
        lines.append(_table(["machine", "slot", "held by", "since", "controller"], rows))
    else:
        lines.append("no slot is claimed")
    if view["studies"]:
        rows = [[st["study"], st["priority"], st["held"], st["max_gpus"] if st["max_gpus"] is not None else "-",
                 f"{st['usage_gpu_s']:.0f}", "-" if st["share"] is None else f"{100 * st['share']:.0f}%",
                 f"waiting {st['wanted']} since {st['waiting_since']}: {st['waiting_for']}" if st["waiting"] else "-"]
                for st in view["studies"]]
        lines.append(_table(["study", "priority", "held", "max_gpus", "GPU-s (recent)", "share", "waiting"], rows))
    lines.append(f"next to be served: {view['next']}" if view["next"] else "no study is waiting")
    for job in view.get("manager_queue", []):
        if "error" in job:
            lines.append(f"{job['launcher']} queue: cannot be read: {job['error']}")
        else:
            lines.append(f"{job['launcher']} job {job['job']} {job['state']} on {job['machine'] or '?'}: {job['name']}"
                         + (f" ({job['reason']})" if job.get("reason") and job["reason"] != "None" else "")
                         + (f" study {job['study']}#{job['trial']}" if job.get("study") else ""))
    return "\n".join(lines)


__all__ = ["manager_queue", "queue_view", "render_queue"]
