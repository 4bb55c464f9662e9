"""Checks of a study against the fleet that need no machine: run before `orch study run` writes anything.

A study that no machine of the fleet could ever run (more GPUs per trial than any machine is declared to
have, labels no machine carries) is refused here with the fleet file, the study field and the fix, and the
database stays as it was. Machines whose GPUs are detected (`gpus: auto`) are checked after their probe, by
the scheduler.
"""

from __future__ import annotations

from ..config.fleet import Fleet
from ..config.study import StudySpec
from .scheduler import NoCapacity, matches_labels


def declared_gpus(gpus: int | str) -> int | None:
    """The GPU count a fleet entry declares: a number, 0 for `none`, None for `auto` (known after a probe)."""
    if gpus == "none":
        return 0
    return gpus if isinstance(gpus, int) else None


def check_fleet_fits(fleet: Fleet, spec: StudySpec) -> None:
    wanted, labels = spec.resources.gpus, spec.resources.labels
    eligible = [m for m in fleet.machines if matches_labels(m, labels)]
    if not eligible:
        raise NoCapacity(f"{fleet.source}: no machine has the labels {labels} that the study asks for in "
                         "resources.labels (fix: add the labels to a machine in the fleet file or change "
                         "resources.labels in the study)")
    if wanted == 0:
        return
    counts = [declared_gpus(m.gpus) for m in eligible]
    if any(count is None for count in counts):
        return
    most = max(counts)
    if most < wanted:
        raise NoCapacity(f"{fleet.source}: the study asks resources.gpus = {wanted} GPU(s) per trial but no machine "
                         f"of the fleet has that many (most: {most}) (fix: lower resources.gpus in the study, or "
                         "add a machine with enough GPUs to the fleet file)")
