"""The live view of `orch study run` in a real terminal (a pseudo-terminal the test reads): the budget's progress
bar, each running trial's step of its total and ETA, and the finished write-up's tables drawn as tables; piped,
the same run prints plain lines and markdown."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

from tests.conftest import orch, stand_in_study

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def _run_on_a_terminal(args: list[str], cwd, columns: int = 150) -> str:
    """Everything `orch ARGS` writes to a terminal of `columns` columns, escape sequences removed."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0, b"".join(chunks)[-3000:]
    return ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))


def test_the_live_view_on_a_terminal(tmp_path):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    study = stand_in_study(tmp_path, max_trials=4, parallel=2, extra_args=["--wall-s", "2", "--val-every", "5"])
    assert orch("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path).returncode == 0
    screen = _run_on_a_terminal(["study", "run", "s", "--db", url], tmp_path)
    # the budget bar: its count of ended trials moved from 0/4 to at least 2/4 while the view was up
    counts = {int(m) for m in re.findall(r"\b([0-4])/4 trials", screen)}
    assert 0 in counts and max(counts) >= 2, screen[-3000:]
    assert "ETA" in screen
    # running trials: the step of the total, and an ETA once a trial has stepped
    steps = {int(m) for m in re.findall(r"\b(\d{1,3})/100\b", screen)}
    assert len(steps) >= 2 and max(steps) <= 100, sorted(steps)
    assert re.search(r"local +cpu:\d +\d+:\d\d +\d+/100 +\d+:\d\d +\d\.\d{4}", screen), screen[-3000:]
    # the write-up at the end: its tables drawn for the terminal, not markdown pipes
    end = screen[screen.rfind("Round 1"):]
    assert "train_time_s" in end and "|---|" not in end and "| trial |" not in end
    assert "study 's' finished: 4 complete, 0 failed" in screen


def test_piped_output_stays_plain(tmp_path):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    study = stand_in_study(tmp_path, max_trials=2, parallel=2)
    assert orch("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path).returncode == 0
    result = orch("study", "run", "s", "--db", url, cwd=tmp_path)
    assert result.returncode == 0 and "| trial |" in result.stdout and "trials" not in result.stdout.split("#")[0]
    assert not ANSI.search(result.stdout)
