"""Why a machine gets no trials: one record per machine and reason, which the controller reports (`orch study run`),
stores as events (`machine.refused` / `machine.accepted`, with the study) and the status views read back.

| kind | when | fix (in the record) |
| --- | --- | --- |
| `host_key` | its SSH host key is unknown or changed (refused, never trusted silently) | `orch fleet trust NAME` after checking the fingerprint |
| `unreachable` | its probe fails (connect, authentication, Ray node gone), or it dropped mid-run | bring it back; it is probed again in the background |
| `checking` | its pre-flight health check runs (before its first trial, or after it came back) | none: it takes trials once the check passes |
| `sick` | its health check failed (GPUs missing or of another model, a wrong product, an all-reduce too slow) | repair the machine; it is checked again in the background |
| `gpus_busy` | processes this study did not start hold GPUs of its free GPU sets (nvidia-smi) | stop them or wait; checked again before every dispatch |
| `drained` | `orch fleet drain NAME` | `orch fleet undrain NAME` |
| `labels` | it lacks a label the study asks for in resources.labels | label it in the fleet file or change the study |
| `too_few_gpus` | it has fewer GPUs than resources.gpus asks per trial | lower resources.gpus or add GPUs |
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from sqlalchemy import select

from db import Database, EventRow

REFUSED, ACCEPTED = "machine.refused", "machine.accepted"
_FIX = re.compile(r"\s*\(fix: (.*)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Refusal:
    machine: str
    kind: str
    reason: str
    fix: str

    def line(self) -> str:
        return f"machine {self.machine} gets no trials ({self.kind}): {self.reason} (fix: {self.fix})"

    def as_dict(self) -> dict:
        return asdict(self)


def split_fix(message: str, default_fix: str) -> tuple[str, str]:
    """`problem (fix: X)` -> (problem, X); a message without its fix gets `default_fix`."""
    found = _FIX.search(message)
    if found:
        return message[:found.start()], found.group(1)
    return message, default_fix


def probe_refusal(machine: str, error: str | None) -> Refusal:
    """A machine whose probe failed: a refused host key is named as such (it may mean someone is in the middle)."""
    text = error or "it did not answer its probe"
    kind = "host_key" if ("host key" in text.lower() or "known_hosts" in text) else "unreachable"
    reason, fix = split_fix(text, "check that the machine is up and reachable (`orch fleet status`); it is probed "
                                  "again in the background and takes trials once it answers")
    return Refusal(machine, kind, reason, fix)


def study_refusals(db: Database, study_id: int) -> list[dict]:
    """The machines a study's controller last recorded as getting no trials (the newest event per machine and kind
    decides), with when it was recorded."""
    with db.session() as s:
        rows = s.execute(select(EventRow.machine, EventRow.kind, EventRow.old, EventRow.new, EventRow.message,
                                EventRow.at).where(EventRow.study_id == study_id,
                                                   EventRow.kind.in_((REFUSED, ACCEPTED)))
                         .order_by(EventRow.id)).all()
    latest: dict[tuple[str, str], dict | None] = {}
    for row in rows:
        if row.kind == REFUSED:
            reason, fix = split_fix(row.message or "", "")
            latest[(row.machine, row.new)] = {"machine": row.machine, "kind": row.new, "reason": reason, "fix": fix,
                                              "since": row.at}
        else:
            latest[(row.machine, row.old)] = None
    return [v for _, v in sorted(latest.items()) if v is not None]


class RefusalBoard:
    """The current refusals of one controller: `update` returns what changed, for reporting and events once."""

    def __init__(self) -> None:
        self.current: dict[tuple[str, str], Refusal] = {}

    def update(self, refusals: list[Refusal]) -> tuple[list[Refusal], list[Refusal]]:
        """(new or changed, cleared) against the previous call."""
        new = {(r.machine, r.kind): r for r in refusals}
        added = [r for key, r in new.items() if self.current.get(key) != r]
        cleared = [r for key, r in self.current.items() if key not in new]
        self.current = new
        return added, cleared

    def by_machine(self) -> dict[str, list[Refusal]]:
        out: dict[str, list[Refusal]] = {}
        for (machine, _), refusal in sorted(self.current.items()):
            out.setdefault(machine, []).append(refusal)
        return out
