"""What `orch study run` shows: on a terminal a live view (a progress bar of the budget with the study's ETA, the
running trials with their step of the total and ETA, machines that get no trials), plain timestamped lines
otherwise; and the finished table, rendered for a terminal."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # the controller is imported where a run starts, not by every command that shows something
    from ..run.controller import Progress, Running


def _summary(p: Progress) -> Text:
    best = f"{p.best_value:.4g} (trial {p.best_number})" if p.best_value is not None else "-"
    return Text(f"{p.study}: round {p.round} | done {p.done} | failed {p.failed} | running {len(p.running)} | "
                f"queued {p.queued} | budget {p.max_trials} | best {best}")


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def trial_eta_s(run: Running, now: float) -> float | None:
    """Seconds until the trial reaches its last step, at the rate it has stepped since its first metric line
    (compile and data loading before that are not counted as stepping)."""
    if run.step is None or not run.total_steps or run.first_point is None:
        return None
    first_step, first_at = run.first_point
    if run.step <= first_step or now <= first_at:
        return None
    return max(0.0, (run.total_steps - run.step) * (now - first_at) / (run.step - first_step))


def _table(p: Progress) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("trial", "machine", "slot", "elapsed", "step", "ETA", "val_loss"):
        table.add_column(column, justify="right" if column in ("elapsed", "step", "ETA", "val_loss") else "left")
    now = time.monotonic()
    for number, run in sorted(p.running.items()):
        step = "-" if run.step is None else f"{run.step}/{run.total_steps}" if run.total_steps else str(run.step)
        table.add_row(str(number), run.slot.machine, run.slot.label, _clock(now - run.started), step,
                      _clock(trial_eta_s(run, now)), f"{run.last_val:.4f}" if run.last_val is not None else "-")
    return table


class BudgetBar:
    """The study's trials that ended (complete or failed) against its budget, with elapsed time and ETA."""

    def __init__(self) -> None:
        self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("trials"),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), auto_refresh=False)
        self.task = None

    def update(self, p: Progress):
        if self.task is None:
            self.task = self.bar.add_task(p.study, total=p.max_trials)
        self.bar.update(self.task, completed=min(p.done + p.failed, p.max_trials), total=p.max_trials)
        return self.bar


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
    """The budget's progress bar and a table of running trials refreshed in place, with event lines scrolling
    above them."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.budget = BudgetBar()
        self.live = Live(console=self.console, refresh_per_second=4, transient=True)
        self.live.start()

    def __call__(self, progress: Progress, message: str) -> None:
        # the new view first: printing the message redraws the view below it, and it must not be the old one
        self.live.update(Group(self.budget.update(progress), _summary(progress), _table(progress),
                               refused_machines(progress)), refresh=not message)
        if message:
            self.console.print(f"{datetime.now():%H:%M:%S} {message}", highlight=False)

    def close(self) -> None:
        self.live.stop()


def make_reporter(plain: bool = False):
    return PlainReporter() if plain or not sys.stdout.isatty() else LiveReporter()


def show_markdown(text: str, plain: bool = False) -> None:
    """A markdown write-up (its tables as tables) on a terminal; the markdown itself otherwise (logs, pipes)."""
    if plain or not sys.stdout.isatty():
        print(text)
    else:
        Console().print(Markdown(text))
