"""Wait for a database server that went away (a restart, a failover, an outage of a few seconds) instead of failing.

`wait_for_server(engine)` hooks the engine's `do_connect`: a new connection that the server refuses (or that
times out) is tried again, with backoff, for up to `ORCH_DB_WAIT_S` seconds (default 120) per outage (only once the server
has answered in this process: a URL that never worked fails at once). With `pool_pre_ping`, a pooled connection that died with the server is replaced through the same path, so every
transaction that starts during an outage waits for the server and then goes on. After the bound the error is a
`DatabaseError` naming the URL, how long it waited and the fix; later connects during the same outage fail
at once instead of waiting again. Our engine and Optuna's share the outage clock (keyed by URL).

SQLite files have no server and are not hooked.
"""

from __future__ import annotations

import os
import threading
import time

from sqlalchemy import event
from sqlalchemy.engine import Engine

DEFAULT_WAIT_S = 120.0
FIRST_DELAY_S, MAX_DELAY_S = 0.1, 2.0


class _Outage:
    """When the server of one URL stopped answering (None: it answers)."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.ever_connected = False  # a server never reached is a wrong URL, not an outage: no waiting
        self.lock = threading.Lock()


_outages: dict[str, _Outage] = {}
_outages_lock = threading.Lock()


def wait_limit_s() -> float:
    try:
        return max(0.0, float(os.environ.get("ORCH_DB_WAIT_S", DEFAULT_WAIT_S)))
    except ValueError:
        return DEFAULT_WAIT_S


def _outage_for(url: str) -> _Outage:
    with _outages_lock:
        return _outages.setdefault(url, _Outage())


def wait_for_server(engine: Engine, shown_url: str, on_wait=None) -> None:
    """Make `engine`'s new connections wait for the server (bounded). `on_wait(message)` hears each wait."""
    outage = _outage_for(str(engine.url))

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, _record, cargs, cparams):
        from .engine import DatabaseError  # engine imports this module

        limit = wait_limit_s()
        delay = FIRST_DELAY_S
        while True:
            try:
                connection = dialect.loaded_dbapi.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as exc:
                now = time.monotonic()
                with outage.lock:
                    if outage.since is None:
                        outage.since = now
                    waited = now - outage.since
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if not outage.ever_connected:
                    raise
                if waited >= limit:
                    raise DatabaseError(
                        f"lost the database {shown_url} for {waited:.0f} s (ORCH_DB_WAIT_S={limit:g}): {reason} "
                        "(fix: start the database server; `orch study run` then resumes where it stopped)") from None
                if on_wait is not None:
                    on_wait(f"database {shown_url} unreachable for {waited:.1f} s ({reason}); retrying")
                time.sleep(min(delay, max(0.0, limit - waited)))
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            with outage.lock:
                outage.since, outage.ever_connected = None, True
            return connection


__all__ = ["wait_for_server", "wait_limit_s", "DEFAULT_WAIT_S"]
