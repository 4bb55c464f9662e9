"""Wait for a database server that went away (a restart, a failover, an outage of a few seconds) instead of failing.

`wait_for_server(engine)` hooks the engine's `do_connect`: a new connection that the server refuses (or that
times out) is tried again, with backoff, for up to `ORCH_DB_WAIT_S` seconds (default 120) per outage (only once the server
has answered in this process: a URL that never worked fails at once). With `pool_pre_ping`, a pooled connection that died with the server is replaced through the same path, so every
transaction that starts during an outage waits for the server and then goes on (the retry policy is tenacity's). After the bound the error is a
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
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from .errors import DatabaseError

DEFAULT_WAIT_S = 120.0
FIRST_DELAY_S, MAX_DELAY_S = 0.1, 2.0


class _Outage:
    """When the server of one URL stopped answering (None: it answers)."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.ever_connected = False  # a server never reached is a wrong URL, not an outage: no waiting
        self.lock = threading.Lock()

    def failed(self) -> float:
        """A connect failed now: how long the server has been away."""
        now = time.monotonic()
        with self.lock:
            if self.since is None:
                self.since = now
            return now - self.since

    def waited(self) -> float:
        with self.lock:
            return 0.0 if self.since is None else time.monotonic() - self.since

    def answered(self) -> None:
        with self.lock:
            self.since, self.ever_connected = None, True


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


def _reason(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def wait_for_server(engine: Engine, shown_url: str, on_wait=None) -> None:
    """Make `engine`'s new connections wait for the server (bounded). `on_wait(message)` hears each wait."""
    outage = _outage_for(str(engine.url))
    backoff = wait_exponential(multiplier=FIRST_DELAY_S, max=MAX_DELAY_S)

    def _give_up(_state: RetryCallState) -> bool:
        return not outage.ever_connected or outage.waited() >= wait_limit_s()

    def _delay(state: RetryCallState) -> float:  # never past the bound of the outage
        return min(backoff(state), max(0.0, wait_limit_s() - outage.waited()))

    def _before_sleep(state: RetryCallState) -> None:
        if on_wait is not None:
            on_wait(f"database {shown_url} unreachable for {outage.waited():.1f} s "
                    f"({_reason(state.outcome.exception())}); retrying")

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, _record, cargs, cparams):
        refused = dialect.loaded_dbapi.OperationalError
        retrying = Retrying(retry=retry_if_exception_type(refused), after=lambda _state: outage.failed(),
                            stop=_give_up, wait=_delay, before_sleep=_before_sleep, reraise=True)
        try:
            connection = retrying(dialect.loaded_dbapi.connect, *cargs, **cparams)
        except refused as exc:
            if not outage.ever_connected:
                raise
            limit = wait_limit_s()
            raise DatabaseError(
                f"lost the database {shown_url} for {outage.waited():.0f} s (ORCH_DB_WAIT_S={limit:g}): {_reason(exc)} "
                "(fix: start the database server; `orch study run` then resumes where it stopped)") from None
        outage.answered()
        return connection


__all__ = ["wait_for_server", "wait_limit_s", "DEFAULT_WAIT_S"]
