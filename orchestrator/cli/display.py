"""What `orch study run` shows: a live table on a terminal, plain timestamped lines otherwise."""

from __future__ import annotations

import sys
import time
from datetime import datetime

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..controller import Progress


def _summary(p: Progress) -> Text:
    best = f"{p.best_value:.4g} (trial {p.best_number})" if p.best_value is not None else "-"
    return Text(f"{p.study}: round {p.round} | done {p.done} | failed {p.failed} | running {len(p.running)} | "
                f"queued {p.queued} | budget {p.max_trials} | best {best}")


def _table(p: Progress) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("trial", "machine", "slot", "elapsed", "step", "val_loss"):
        table.add_column(column)
    now = time.monotonic()
    for number, run in sorted(p.running.items()):
        table.add_row(str(number), run.slot.machine, run.slot.label, f"{now - run.started:.0f}s",
                      str(run.last_step if run.last_step is not None else "-"),
                      f"{run.last_val:.4f}" if run.last_val is not None else "-")
    return table


def refused_machines(p: Progress) -> Text:
    """The machines that get no trials now and why (host key, down, sick, busy GPUs, ...; liveness/refusals.py)."""
    return Text("\n".join(p.refusals), style="yellow") if p.refusals else Text("")


class PlainReporter:
    """One line per event, for logs and CI."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, progress: Progress, message: str) -> None:
        if message:
            print(f"{datetime.now():%H:%M:%S} {message}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class LiveReporter:
    """A table of running trials refreshed in place, with event lines scrolling above it."""

    def __init__(self) -> None:
        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=True)
        self.live.start()

    def __call__(self, progress: Progress, message: str) -> None:
        if message:
            self.console.print(f"{datetime.now():%H:%M:%S} {message}", highlight=False)
        self.live.update(Group(_summary(progress), _table(progress), refused_machines(progress)))

    def close(self) -> None:
        self.live.stop()


def make_reporter(plain: bool = False):
    return PlainReporter() if plain or not sys.stdout.isatty() else LiveReporter()
