"""What still fails at run time fails the study cleanly: one message (field and fix), exit 2, no traceback, the
study `stopped` rather than `running`, no trial left `pending`, and the next `orch study run` completes it.

Two failures `orch study create` cannot see: a sampler that raises while choosing values (an option used only
after its startup trials), and a launcher that raises something other than an OSError or OrchError."""

from __future__ import annotations

import signal

import pytest
from sqlalchemy import select

from db import Database, StudyRow, TrialRow
from orchestrator.cli.main import main
from tests.conftest import stand_in_study

FLEET = "machines:\n  - name: box1\n    launcher: local\n    gpus: none\n    cpu_slots: 2\n"


@pytest.fixture
def study(tmp_path, monkeypatch):
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    spec = stand_in_study(tmp_path, max_trials=2, parallel=2)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET)
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    monkeypatch.chdir(tmp_path)
    assert main(["study", "create", "s", "--from", str(spec), "--db", url]) == 0
    yield url, str(fleet)
    for signum, handler in handlers.items():  # `orch study run` installs its own handlers
        signal.signal(signum, handler)


def _state(url: str) -> tuple[str, list[str]]:
    db = Database(url)
    with db.session() as s:
        status = s.scalar(select(StudyRow.status).where(StudyRow.name == "s"))
        states = list(s.scalars(select(TrialRow.state)))
    return status, states


def test_a_sampler_failing_at_run_time_stops_the_study_cleanly(study, monkeypatch, capsys):
    url, fleet = study

    def broken(*_args, **_kwargs):
        raise TypeError("'<' not supported between instances of 'int' and 'str'")

    with monkeypatch.context() as patch:
        patch.setattr("orchestrator.run.sources.next_trial", broken)
        code = main(["study", "run", "s", "--fleet", fleet, "--db", url, "--plain"])
    output = capsys.readouterr()
    text = output.out + output.err
    assert code == 2 and "Traceback" not in text, text
    assert "sampler.options: the random sampler failed while choosing trial values: TypeError" in text
    assert "fix: correct the sampler's options" in text and "study.yaml" in text
    status, states = _state(url)
    assert status == "stopped" and "pending" not in states and "running" not in states, (status, states)
    assert main(["study", "run", "s", "--fleet", fleet, "--db", url, "--plain"]) == 0
    status, states = _state(url)
    assert status == "finished" and states.count("complete") == 2, (status, states)


def test_a_launcher_raising_unexpectedly_requeues_the_trial(study, monkeypatch, capsys):
    url, fleet = study

    def broken(self, job, *args, **kwargs):
        raise ValueError("illegal environment variable name")

    with monkeypatch.context() as patch:
        patch.setattr("orchestrator.launchers.local.LocalLauncher.start", broken)
        code = main(["study", "run", "s", "--fleet", fleet, "--db", url, "--plain"])
    output = capsys.readouterr()
    text = output.out + output.err
    assert code == 2 and "Traceback" not in text, text
    assert "could not start on machine box1: ValueError: illegal environment variable name" in text
    assert "fix: correct the machine's settings in the fleet file" in text
    status, states = _state(url)
    assert status == "stopped" and "pending" not in states and "running" not in states, (status, states)
    assert "lost" in states  # re-queued as a retry, not counted as a failed trial
    assert main(["study", "run", "s", "--fleet", fleet, "--db", url, "--plain"]) == 0
    status, states = _state(url)
    assert status == "finished" and states.count("complete") == 2, (status, states)
