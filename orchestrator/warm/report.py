"""Cache and data state of each machine, as its newest trial's entry program reported it (`@@warm` in the log).

The entry program prints one `@@warm {...}` line at the start of every trial it starts: the cache key, whether that
key already had entries, the cache's size, the other keys kept, the library versions, the state of each data
file (`verified`: hashed now, `checked`: size and mtime as at its last full check) or the refusal, and with
`trainer.fork_server` whether the trainer was forked (the server's pid and forks) or started fresh (why). `orch fleet
status` shows the newest such report of each machine (`machine_states`), read from the trial's log on the
controller's host (the local copy every launcher keeps); a machine none of whose recent trials has a report shows
nothing.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select

from db import Database, StudyRow, TrialRow

from .launch import parse

HEAD_LINES = 400  # the report is among the first lines of a log (the entry prints it before the trainer starts)
RECENT = 3  # trials per machine looked at, newest first


def log_report(path: str | Path | None) -> dict | None:
    """The first `@@warm` report in a log (None: none in its first lines, or no log)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f):
                if number >= HEAD_LINES:
                    break
                report = parse(line)
                if report is not None:
                    return report
    except OSError:
        return None
    return None


def summary(report: dict) -> dict:
    """What the status view shows of one report."""
    data = report.get("data") or []
    states: dict[str, int] = {}
    for item in data:
        states[item.get("state", "?")] = states.get(item.get("state", "?"), 0) + 1
    return {"ok": report.get("ok", True), "key": report.get("key"), "found": report.get("found"),
            "entries": report.get("entries"), "bytes": report.get("bytes"), "other_keys": report.get("other_keys"),
            "other_bytes": report.get("other_bytes"), "versions": report.get("versions") or {},
            "data": {"files": len(data), "bytes": report.get("data_bytes", 0), "states": states},
            "error": report.get("error"), "fix": report.get("fix"), "setup_ms": report.get("ms"),
            "fork": _fork_summary(report.get("fork"))}


def _fork_summary(fork: dict | None) -> dict | None:
    """How the trainer started with `trainer.fork_server` (forkserver.py); None without one."""
    if not isinstance(fork, dict):
        return None
    if fork.get("state") != "forked":
        return {"state": fork.get("state", "fresh"), "why": fork.get("why")}
    return {"state": "forked", "server_pid": fork.get("server_pid"), "forks": fork.get("forks"),
            "preload_s": fork.get("preload_s"), "spawned": fork.get("spawned")}


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")


def machine_states(db: Database, names: list[str]) -> dict[str, dict]:
    """Per machine: the summary of the newest report among its `RECENT` newest started trials, with the trial
    (`study#number`) and when it started."""
    out: dict[str, dict] = {}
    with db.session() as s:
        for name in names:
            rows = s.execute(select(StudyRow.name, TrialRow.number, TrialRow.log_path, TrialRow.started_at)
                             .join(StudyRow, StudyRow.id == TrialRow.study_id)
                             .where(TrialRow.machine == name, TrialRow.started_at.is_not(None))
                             .order_by(TrialRow.started_at.desc(), TrialRow.id.desc()).limit(RECENT)).all()
            for study, number, log_path, started in rows:
                report = log_report(log_path)
                if report is not None:
                    out[name] = {"trial": f"{study}#{number}", "at": _iso(started), **summary(report)}
                    break
    return out


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def render(name: str, state: dict) -> str:
    """One line of `orch fleet status`: cache and data state of a machine."""
    when = f"as of {state['trial']}, {state['at']}"
    if not state.get("ok", True):
        return f"  {name} warm: refused ({when}): {state.get('error')} (fix: {state.get('fix')})"
    cache = (f"cache {state['key']} {'warm' if state.get('found') else 'cold'} ({state.get('entries') or 0} files, "
             f"{_size(state.get('bytes'))}")
    if state.get("other_keys"):
        cache += f"; {state['other_keys']} older key(s), {_size(state.get('other_bytes'))}"
    cache += ")"
    data = state.get("data") or {}
    if data.get("files"):
        states = ", ".join(f"{n} {s}" for s, n in sorted(data["states"].items()))
        cache += f"; data {data['files']} file(s), {_size(data.get('bytes'))} ({states})"
    else:
        cache += "; no data staged by the study"
    fork = state.get("fork")
    if fork and fork["state"] == "forked":
        cache += (f"; fork server pid {fork['server_pid']} ({fork['forks']} fork(s), preload "
                  f"{fork['preload_s'] if fork['preload_s'] is not None else '?'} s)")
    elif fork:
        cache += f"; trainer started fresh, not forked: {fork.get('why')}"
    return f"  {name} warm: {cache} ({when})"
