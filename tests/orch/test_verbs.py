"""The verbs a newcomer expects, each run as a real `orch` process (and `optuna`, `bash` where they take part):
--version, shell completion, init, study delete (and a study deleted with Optuna's own tools), trial list / show /
logs [--follow] / cancel, study stop (finish, --now) from another process, status telling a stopped controller
from a running one, and drain --reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import optuna
import pytest
import yaml
from sqlalchemy import select

from db import Database, RequestRow, StudyRow, TrialRow
from orchestrator.cli.main import main
from orchestrator.launchers.local import process_alive
from tests.conftest import dump_database, orch, stand_in_study, wait_for
from tests.injection.test_modded_nanogpt import script_from_log
from tests.helpers.shared_logs import log

from ._checks import assert_agrees_with_optuna, rows_of

BIN = Path(sys.executable).parent


def _ok(*args, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    result = orch(*args, cwd=cwd, **kwargs)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def _json(*args, cwd: Path):
    return json.loads(_ok(*args, "--json", cwd=cwd).stdout)


def _in_process(capsys, *args) -> tuple[int, str, str]:
    """`orch ARGS` through the same entry point in this process: the supplementary checks of a verb whose real
    process is tested once (each `orch` process costs seconds of imports)."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _run_in_background(name: str, url: str, cwd: Path) -> subprocess.Popen:
    """`orch study run NAME`, as a user starts it in another terminal."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", "study", "run", name, "--db", url,
                             "--plain"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trial(url: str, number: int) -> TrialRow | None:
    db = Database(url)
    try:
        with db.session() as s:
            return s.scalar(select(TrialRow).where(TrialRow.number == number))
    finally:
        db.dispose()


def _study(url: str) -> StudyRow:
    db = Database(url)
    try:
        with db.session() as s:
            return s.scalar(select(StudyRow))
    finally:
        db.dispose()


def _wait_running(url: str, number: int) -> TrialRow:
    return wait_for(lambda: (lambda r: r if r is not None and r.state == "running" else None)(_trial(url, number)),
                    60, f"trial {number} to run")


@pytest.fixture
def ran(tmp_path):
    """A SQLite database holding study `s`, run to its end: 2 trials."""
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    study = stand_in_study(tmp_path, max_trials=2, parallel=2)
    _ok("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path)
    _ok("study", "run", "s", "--db", url, cwd=tmp_path)
    return url, tmp_path, study


def test_version_and_shell_completion(tmp_path):
    assert _ok("--version", cwd=tmp_path).stdout.strip() == f"orch {version('speedrun-orch')}"
    script = _ok("--show-completion", "bash", cwd=tmp_path).stdout  # the shell named, whatever the parent process
    unknown = orch("--show-completion", "tcsh", cwd=tmp_path)
    assert unknown.returncode == 2 and "not a shell orch completes" in unknown.stderr and "zsh" in unknown.stderr
    assert "_ORCH_COMPLETE=complete_bash" in script and "complete -o default -F _orch_completion orch" in script
    # the script in a real bash, asking what follows `orch st` and `orch trial `
    (tmp_path / "orch-completion.bash").write_text(script)
    probe = ('source orch-completion.bash; for words in "st" "trial "; do read -ra COMP_WORDS <<< "orch $words"; '
             '[ "${words: -1}" = " " ] && COMP_WORDS+=(""); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); '
             '_orch_completion orch; echo "${COMPREPLY[*]}"; done')
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["study", "list show logs cancel"]


@pytest.mark.parametrize("trainer", ["orch", "modded-nanogpt", "parameter-golf", "nanochat"])
def test_init_writes_a_fleet_and_a_study_that_validate(trainer, tmp_path):
    out = _ok("init", "--trainer", trainer, "--dir", "proj", cwd=tmp_path).stdout
    fleet, study = tmp_path / "proj" / "fleet.yaml", tmp_path / "proj" / "study.yaml"
    assert f"wrote {Path('proj') / 'fleet.yaml'}" in out and f"wrote {Path('proj') / 'study.yaml'}" in out
    for path in (fleet, study):
        assert path.read_text().startswith("# ")  # commented for the reader
    spec = yaml.safe_load(study.read_text())
    assert spec["trainer"]["log_format"] == trainer
    assert [m["name"] for m in yaml.safe_load(fleet.read_text())["machines"]] == ["local"]
    checked = _ok("study", "validate", str(study), cwd=tmp_path)
    assert f"{study}: ok" in checked.stdout


def test_init_for_a_real_modded_nanogpt_checkout_passes_the_injection_check(tmp_path):
    """With the checkout present, validate patches the real train_gpt.py at both ends of every range."""
    checkout = tmp_path / "proj" / "mng"
    checkout.mkdir(parents=True)
    (checkout / "train_gpt.py").write_text(script_from_log(log("modded-nanogpt", "06_")))
    _ok("init", "--trainer", "modded-nanogpt", "--dir", "proj", "--code-dir", "mng", cwd=tmp_path)
    result = _ok("study", "validate", "proj/study.yaml", cwd=tmp_path)
    assert "ok (2 parameters, sampler frontier" in result.stdout and "warning" not in result.stderr
    (checkout / "train_gpt.py").write_text("print('no stages here')\n")  # the check is real: a script without them fails
    broken = orch("study", "validate", "proj/study.yaml", cwd=tmp_path)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr and "study.yaml" in broken.stderr
    again = orch("init", "--trainer", "orch", "--dir", "proj", cwd=tmp_path)  # nothing is overwritten unasked
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"{Path('proj') / 'fleet.yaml'} exists (fix: pass --force" in again.stderr


def _optuna_names(url: str) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage=url)]


def test_study_delete_removes_both_halves_in_one_go(db_url, tmp_path):
    study = stand_in_study(tmp_path, max_trials=2, parallel=2)
    for name in ("s", "keep"):
        _ok("study", "create", name, "--from", str(study), "--db", db_url, cwd=tmp_path)
    _ok("study", "run", "s", "--db", db_url, cwd=tmp_path)
    before = dump_database(db_url)
    refused = orch("study", "delete", "s", "--db", db_url, cwd=tmp_path)  # stdin is not a terminal: no prompt
    assert refused.returncode == 2 and "cannot be undone (fix: pass --yes)" in refused.stderr
    assert dump_database(db_url) == before
    deleted = _json("study", "delete", "s", "--yes", "--db", db_url, cwd=tmp_path)
    assert deleted == {"study": "s", "deleted": True, "trials": 2, "metric_points": deleted["metric_points"],
                       "optuna_trials": 2} and deleted["metric_points"] > 0
    assert _optuna_names(db_url) == ["keep"]
    db = Database(db_url)
    with db.session() as s:
        assert list(s.scalars(select(StudyRow.name))) == ["keep"] and s.scalar(select(TrialRow.id)) is None
    assert [v["study"] for v in _json("study", "list", "--db", db_url, cwd=tmp_path)] == ["keep"]
    _ok("study", "create", "s", "--from", str(study), "--db", db_url, cwd=tmp_path)  # the name is free again


def test_a_study_deleted_with_optunas_tools_is_noticed_and_its_name_reusable(tmp_path, ran):
    url, tmp_path, study = ran
    gone = subprocess.run([str(BIN / "optuna"), "delete-study", "--study-name", "s", "--storage", url],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert gone.returncode == 0, gone.stderr
    (listed,) = _json("study", "list", "--db", url, cwd=tmp_path)
    assert listed["deleted_in_optuna"] and listed["status"] == "deleted in Optuna"
    for args in (["study", "run", "s"], ["study", "status", "s"], ["trial", "list", "s"]):
        result = orch(*args, "--db", url, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr and "KeyError" not in result.stderr
        assert "study 's' was deleted from Optuna's tables" in result.stderr and "orch study delete s --yes" in result.stderr
    created = _ok("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path)
    assert "had been deleted with Optuna's tools; orch's leftover rows of it (2 trials) were removed" in created.stdout
    _ok("study", "run", "s", "--db", url, cwd=tmp_path)
    assert [r.state for r in assert_agrees_with_optuna(Database(url), "s")] == ["complete", "complete"]


def test_trial_list_show_and_logs(ran, capsys):
    url, tmp_path, _ = ran
    rows = rows_of(Database(url), "s")
    listed = _json("trial", "list", "s", "--db", url, cwd=tmp_path)
    assert [(t["trial"], t["state"], t["machine"], t["value"], t["val_loss"], t["hit"]) for t in listed["trials"]] == [
        (r.number, r.state, r.machine, r.value, r.metrics["val_loss"], r.feasible) for r in rows]
    shown = _json("trial", "show", "s#1", "--db", url, cwd=tmp_path)
    assert shown["number"] == 1 and shown["command"] == rows[1].command and shown["params"] == rows[1].params
    assert [e["new"] for e in shown["events"]] == ["pending", "running", "complete"]
    assert shown["last_point"]["step"] == shown["last_point"]["total_steps"] == 100
    text = Path(rows[0].log_path).read_text()
    assert _ok("trial", "logs", "s#0", "--db", url, cwd=tmp_path).stdout == text
    bad = orch("trial", "show", "s-1", "--db", url, cwd=tmp_path)
    assert bad.returncode == 2 and "is not STUDY#N" in bad.stderr and "Traceback" not in bad.stderr
    # the same verbs' other forms, in this process
    code, out, _ = _in_process(capsys, "trial", "list", "s", "--db", url)
    table = out.splitlines()
    assert code == 0 and table[0].split()[:7] == ["trial", "round", "state", "machine", "params", "train_time_s",
                                                  "val_loss"]
    assert [line.split()[0] for line in table[1:]] == [str(r.number) for r in rows]
    code, out, _ = _in_process(capsys, "trial", "list", "s", "--state", "failed", "--json", "--db", url)
    assert code == 0 and json.loads(out)["trials"] == []
    code, out, _ = _in_process(capsys, "trial", "show", "s#1", "--db", url)
    assert code == 0 and "events:" in out and "running -> complete" in out
    code, out, _ = _in_process(capsys, "trial", "logs", "s#0", "--tail", "2", "--db", url)
    assert code == 0 and out.splitlines() == text.splitlines()[-2:]
    for args, words in ((["trial", "show", "s#9"], "study 's' has no trial 9 (trials 0..1)"),
                        (["trial", "logs", "t#0"], "no study named 't'"),
                        (["trial", "list", "s", "--state", "done"], "--state 'done' is not a trial state")):
        code, _, err = _in_process(capsys, *args, "--db", url)
        assert code == 2 and words in err, (args, err)


def test_logs_follow_ends_when_the_trial_ends(tmp_path):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    study = stand_in_study(tmp_path, max_trials=1, parallel=1, extra_args=["--wall-s", "3"])
    _ok("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path)
    run = _run_in_background("s", url, tmp_path)
    try:
        _wait_running(url, 0)
        follow = orch("trial", "logs", "s#0", "--follow", "--db", url, cwd=tmp_path, timeout=60)
        assert follow.returncode == 0, follow.stderr
        row = _trial(url, 0)
        assert row.state == "complete"  # it returned because the trial ended, with every line of it
        assert follow.stdout == Path(row.log_path).read_text() and '"event": "final"' in follow.stdout
    finally:
        run.communicate(timeout=60)


def test_cancel_and_stop_now_from_other_processes(tmp_path):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    study = stand_in_study(tmp_path, max_trials=3, parallel=1, repeats=2, extra_args=["--hang"])
    _ok("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path)
    run = _run_in_background("s", url, tmp_path)
    try:
        hung = _wait_running(url, 0)
        status = _json("study", "status", "s", "--db", url, cwd=tmp_path)
        assert status["status"] == "running" and status["controller"].split(":")[1] == str(run.pid)
        queued = [t for t in _json("trial", "list", "s", "--db", url, cwd=tmp_path)["trials"] if t["state"] == "queued"]
        assert [t["trial"] for t in queued] == [1]  # trial 0's repeat
        cancelled = _json("trial", "cancel", "s#1", "--db", url, cwd=tmp_path)  # off the queue, never started
        assert cancelled["cancelled"] and cancelled["outcome"] == "trial 1 cancelled (it was queued, not started)"
        cancelled = _json("trial", "cancel", "s#0", "--reason", "wrong data", "--db", url, cwd=tmp_path)
        assert cancelled["cancelled"] and cancelled["controller"] == status["controller"]
        row = _trial(url, 0)
        assert row.state == "cancelled" and row.exit_reason == "cancelled" and "wrong data" in row.note
        wait_for(lambda: not process_alive(hung.pid, hung.pid_start), 10, "the cancelled job to be gone")
        nothing = orch("trial", "cancel", "s#0", "--db", url, cwd=tmp_path)
        assert nothing.returncode == 1 and "not cancelled: trial 0 is cancelled, not running" in nothing.stdout
        _wait_running(url, 2)  # the budget (3) still has room: cancelled trials do not count against it
        stopped = _json("study", "stop", "s", "--now", "--wait", "60", "--db", url, cwd=tmp_path)
        assert stopped["exited"] and stopped["status"] == "stopped" and stopped["mode"] == "now"
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 0, out  # a clean exit, not an interrupt
        assert "stopped by `orch study stop`" in out and "0 complete, 0 failed" in out
    finally:
        if run.poll() is None:
            run.kill()
    rows = assert_agrees_with_optuna(Database(url), "s")
    assert [(r.number, r.state) for r in rows] == [(0, "cancelled"), (1, "cancelled"), (2, "lost")]
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [trials[n].user_attrs.get("exit_reason") for n in (0, 1)] == ["cancelled"] * 2
    after = _json("study", "status", "s", "--db", url, cwd=tmp_path)
    assert after["status"] == after["recorded_status"] == "stopped" and after["controller"] is None
    # no controller now: a queued trial (trial 2's repeat or retry) is cancelled by the command itself
    queued = [t["trial"] for t in _json("trial", "list", "s", "--db", url, cwd=tmp_path)["trials"]
              if t["state"] == "queued"]
    assert _json("trial", "cancel", f"s#{queued[0]}", "--db", url, cwd=tmp_path)["cancelled"]
    assert ("cancelled", "cancelled") == (lambda r: (r.state, r.exit_reason))(_trial(url, queued[0]))
    assert_agrees_with_optuna(Database(url), "s")


def test_stop_lets_running_trials_finish_then_exits_cleanly(tmp_path):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    study = stand_in_study(tmp_path, max_trials=20, parallel=2, dispatch="continuous", extra_args=["--wall-s", "2"])
    _ok("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path)
    run = _run_in_background("s", url, tmp_path)
    try:
        _wait_running(url, 1)
        stopped = _json("study", "stop", "s", "--reason", "maintenance", "--wait", "60", "--db", url, cwd=tmp_path)
        out, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, out
    assert stopped["exited"] and stopped["status"] == "stopped" and stopped["mode"] == "finish"
    db = Database(url)
    with db.session() as s:
        asked = s.scalar(select(RequestRow.created_at).where(RequestRow.kind == "stop"))
    rows = rows_of(db, "s")
    assert rows and all(r.state == "complete" for r in rows)  # the running ones finished, none was killed
    aware = lambda t: t if t.tzinfo else t.replace(tzinfo=asked.tzinfo)  # noqa: E731
    late = [r.number for r in rows if aware(r.created_at) > aware(asked)]
    assert late == [], f"trials {late} started after the stop request"
    assert "maintenance" in out and len(rows) < 20


def test_status_tells_a_killed_controller_from_a_running_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    study = stand_in_study(tmp_path, max_trials=2, parallel=1, extra_args=["--hang"])
    _ok("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path)
    run = _run_in_background("s", url, tmp_path)
    _wait_running(url, 0)
    assert _json("study", "status", "s", "--db", url, cwd=tmp_path)["status"] == "running"
    run.send_signal(signal.SIGKILL)  # no chance to record anything
    run.communicate(timeout=60)
    view = _json("study", "status", "s", "--db", url, cwd=tmp_path)
    assert (view["status"], view["recorded_status"], view["controller"]) == ("stopped", "running", None)
    assert "controller: none (the last one ended without recording it" in \
        _ok("study", "status", "s", "--db", url, cwd=tmp_path).stdout
    marked = _ok("study", "stop", "s", "--db", url, cwd=tmp_path).stdout
    assert "no controller runs it; its status said running" in marked and _study(url).status == "stopped"
    # Ctrl-C records it: the next run's interrupt leaves the study `stopped`, not `running`
    run = _run_in_background("s", url, tmp_path)
    wait_for(lambda: _study(url).status == "running", 60, "the controller to record its start")
    run.send_signal(signal.SIGINT)
    run.communicate(timeout=60)
    assert run.returncode == 130 and _study(url).status == "stopped"


def test_drain_reason_is_shown_by_fleet_status(tmp_path):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    drained = _json("fleet", "drain", "local", "--reason", "  swapping\na disk ", "--db", url, cwd=tmp_path)
    assert drained["drain"] and drained["reason"] == "swapping a disk"
    (machine,) = _json("fleet", "status", "--db", url, cwd=tmp_path)["machines"]
    assert machine["state"] == "drained" and machine["drain_reason"] == "swapping a disk"
    assert "local drained: swapping a disk" in _ok("fleet", "status", "--db", url, cwd=tmp_path).stdout
    _ok("fleet", "undrain", "local", "--db", url, cwd=tmp_path)
    (machine,) = _json("fleet", "status", "--db", url, cwd=tmp_path)["machines"]
    assert machine["state"] == "idle" and machine["drain_reason"] is None


def test_a_study_deleted_in_optuna_while_it_runs_stops_its_controller_clearly(tmp_path):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    study = stand_in_study(tmp_path, max_trials=2, parallel=1, extra_args=["--hang"])
    _ok("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path)
    run = _run_in_background("s", url, tmp_path)
    try:
        hung = _wait_running(url, 0)
        gone = subprocess.run([str(BIN / "optuna"), "delete-study", "--study-name", "s", "--storage", url],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert gone.returncode == 0, gone.stderr
        out, _ = run.communicate(timeout=60)  # noticed at its next heartbeat (5 s) at the latest
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 2 and "Traceback" not in out and "KeyError" not in out, out
    assert "study 's' was deleted from Optuna's tables while it ran" in out
    wait_for(lambda: not process_alive(hung.pid, hung.pid_start), 15, "its job to be stopped")
    assert _json("study", "delete", "s", "--yes", "--db", url, cwd=tmp_path)["trials"] == 1
