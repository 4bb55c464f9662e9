"""`orch study confirm` end to end with real `orch` processes, the stand-in trainer (tests/helpers) whose val_loss
distribution each test sets (`--loss-mean`, `--noise`) and a real SQLite file: the sequential plan is stored before
the first run and read look by look; paired timing runs ABBA blocks on each machine and removes the machines'
speed difference."""

from __future__ import annotations

import json
from datetime import timezone

import optuna
import pytest
import scipy.stats
import yaml
from sqlalchemy import select

from db import BatchRow, Database, EventRow
from tests.conftest import orch, stand_in_study
from tests.orch._checks import assert_agrees_with_optuna, rows_of

TARGET = 3.28


def _ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _study(tmp_path, url, *args, **kwargs):
    _ok(orch("study", "create", "s", "--from", str(stand_in_study(tmp_path, extra_args=list(args), threshold=TARGET,
                                                                  **kwargs)), "--db", url, cwd=tmp_path))


def _kinds(url):
    study = optuna.load_study(study_name="s", storage=url)
    return {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}


def _aware(when):
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@pytest.mark.parametrize("loss_mean,decision", [(3.2760, "pass"), (3.2835, "futility")])
def test_sequential_confirmation_stops_when_the_evidence_suffices(tmp_path, loss_mean, decision):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    _study(tmp_path, url, "--loss-mean", str(loss_mean), "--noise", "0.0015", max_trials=2, parallel=2)
    _ok(orch("study", "run", "s", "--db", url, cwd=tmp_path))
    result = _ok(orch("study", "confirm", "s", "--variant", "stage1=0.3,stage2=0.3", "--max-runs", "9",
                      "--first-look", "3", "--look-every", "2", "--sigma", "0.0015", "--effect", "0.003", "--json",
                      "--db", url, cwd=tmp_path))
    summary = json.loads(result.stdout)
    plan, final = summary["plan"], summary["decision"]
    assert plan["looks"] == [3, 5, 7, 9] and plan["nominal_p"] < 0.01 and plan["type_one"] <= 0.01
    assert final["decision"] == decision
    db = Database(url)
    attrs = _kinds(url)
    runs = [r for r in rows_of(db, "s") if attrs[r.number].get("kind") == "confirmation"]
    # only the runs the looks needed: the plan stopped at the look it names
    assert len(runs) == final["n"] == plan["looks"][final["look"] - 1] < plan["looks"][-1] + 1
    losses = [r.metrics["val_loss"] for r in sorted(runs, key=lambda r: attrs[r.number]["batch_index"])]
    p = scipy.stats.ttest_1samp(losses, TARGET, alternative="less").pvalue
    assert final["p_value"] == pytest.approx(p)
    assert (p < plan["nominal_p"]) == (decision == "pass")
    if decision == "futility":
        assert sum(losses) / len(losses) > TARGET and final["look"] == 1
    # the plan was in the database before the first confirmation run was queued
    with db.session() as s:
        batch = s.scalar(select(BatchRow).where(BatchRow.kind == "confirmation"))
        planned = s.scalar(select(EventRow).where(EventRow.kind == "confirm.plan"))
        looks = list(s.scalars(select(EventRow.message).where(EventRow.kind == "confirm.look").order_by(EventRow.id)))
    assert batch.args["plan"] == plan and batch.state == "done"
    assert _aware(planned.at) <= min(_aware(r.created_at) for r in runs)
    assert len(looks) == final["look"] and looks[-1].endswith(final["text"])
    assert summary["certification"]["passed"] == (decision == "pass")
    assert_agrees_with_optuna(db, "s")
    status = _ok(orch("study", "status", "s", "--db", url, cwd=tmp_path)).stdout
    assert ("certified" if decision == "pass" else "not certified") in status
    assert f"runs {', '.join(str(r.number) for r in sorted(runs, key=lambda r: r.number))}" in status


def test_paired_timing_blocks_by_machine(tmp_path):
    """Two machines, one 6% slower: every ABBA block runs on its machine in order, and the blocked interval of the
    time difference is far narrower than the unblocked one (the machine difference is removed)."""
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"machines": [
        {"name": "fast", "launcher": "local", "gpus": "none", "cpu_slots": 1, "env": {"STAND_IN_SLOWDOWN": "1.0"}},
        {"name": "slow", "launcher": "local", "gpus": "none", "cpu_slots": 1, "env": {"STAND_IN_SLOWDOWN": "1.06"}}]}))
    _study(tmp_path, url, "--time-noise", "0.002", max_trials=2, parallel=2)
    _ok(orch("study", "run", "s", "--db", url, "--fleet", str(fleet), cwd=tmp_path))
    result = _ok(orch("study", "confirm", "s", "--paired", "--variant", "stage1=0.4,stage2=0.3", "--baseline",
                      "stage1=0.34,stage2=0.32", "--json", "--db", url, "--fleet", str(fleet), cwd=tmp_path))
    summary = json.loads(result.stdout)
    db = Database(url)
    attrs = _kinds(url)
    paired = sorted((r for r in rows_of(db, "s") if attrs[r.number].get("paired_block") is not None),
                    key=lambda r: r.started_at)
    assert len(paired) == 8
    for machine in ("fast", "slow"):
        block = [r for r in paired if r.machine == machine]
        assert [attrs[r.number]["paired_role"] for r in block] == ["A", "B", "B", "A"]  # in time order
        assert all(b.started_at >= a.ended_at for a, b in zip(block, block[1:]))  # one at a time
        assert [attrs[r.number]["kind"] for r in block] == ["confirmation", "baseline", "baseline", "confirmation"]
    timing = summary["paired"]
    # the stand-in's times: stage costs 21/38/55 ms x steps, x the machine's slowdown
    true = (40 * 21 + 30 * 38 + 30 * 55) - (34 * 21 + 32 * 38 + 34 * 55)
    lo, hi = timing["interval"]
    assert lo < true / 1000 * 1.03 and true / 1000 * 0.97 < hi  # the candidate's saving, in seconds, on average
    assert hi < 0 and timing["df"] == 4  # 8 runs - 2 blocks - difference - trend
    wlo, whi = timing["welch_interval"]
    assert (hi - lo) * 3 < (whi - wlo)  # blocking removed the 6% machine difference from the comparison
    assert "the candidate is faster" in timing["text"]
    status = _ok(orch("study", "status", "s", "--db", url, cwd=tmp_path)).stdout
    assert "paired timing" in status


def test_paired_against_the_unmodified_trainer(tmp_path):
    """`--baseline unmodified`: the B runs get the trainer's own command, none of the study's arguments."""
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"machines": [{"name": "one", "launcher": "local", "gpus": "none", "cpu_slots": 2}]}))
    _study(tmp_path, url, max_trials=2, parallel=2)
    summary = json.loads(_ok(orch("study", "confirm", "s", "--paired", "--variant", "stage1=0.4,stage2=0.3",
                                  "--baseline", "unmodified", "--json", "--db", url, "--fleet", str(fleet),
                                  cwd=tmp_path)).stdout)
    db = Database(url)
    attrs = _kinds(url)
    rows = sorted(rows_of(db, "s"), key=lambda r: r.started_at)
    assert [attrs[r.number]["paired_role"] for r in rows] == ["A", "B", "B", "A"]
    for r in rows:
        unmodified = attrs[r.number]["paired_role"] == "B"
        assert ("--stage-durations" in r.command) != unmodified and (r.variant == "unmodified") == unmodified
        assert attrs[r.number]["kind"] == ("unmodified" if unmodified else "confirmation")
    # the stand-in's own stages are 0.34/0.33/0.33: 3783 ms; the candidate's 0.4/0.3/0.3: 3630 ms
    assert summary["paired"]["difference"] == pytest.approx(-0.153, abs=1e-6)
    md = _ok(orch("export", "s", "--db", url, cwd=tmp_path)).stdout
    section = md.split("## Paired timing (batch #1)", 1)[1].split("\n## ", 1)[0]
    assert "candidate - baseline train_time_s: -0.153" in section and section.count("| baseline |") == 2


def _step_study(tmp_path, step_loss: float) -> str:
    path = stand_in_study(tmp_path, extra_args=["--noise", "0.0008", "--ref-steps", "100", "--step-loss",
                                                str(step_loss)], threshold=3.30, max_trials=2, parallel=2)
    spec = yaml.safe_load(path.read_text())
    spec["trainer"]["steps"] = {"flags": {"--steps": "{steps}"}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


@pytest.mark.parametrize("step_loss,beats", [(1.0, True), (0.0, False)])
def test_step_cut_baseline_answers_whether_the_schedule_beats_cutting_steps(tmp_path, step_loss, beats):
    """The stand-in's loss rises by step_loss x (100/steps - 1) when its schedule is cut: with 1.0 a cut that saves
    the candidate's 4.5% costs ~0.04 in loss, more than the candidate's 0.011; with 0.0 cutting steps is free."""
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    _ok(orch("study", "create", "s", "--from", _step_study(tmp_path, step_loss), "--db", url, cwd=tmp_path))
    base, cand = "stage1=0.34,stage2=0.32", "stage1=0.4,stage2=0.3"
    _ok(orch("study", "baseline", "s", "--params", base, "--repeats", "2", "--db", url, cwd=tmp_path))
    _ok(orch("study", "confirm", "s", "--variant", cand, "--max-runs", "3", "--first-look", "3", "--sigma", "0.001",
             "--track", "modded-nanogpt", "--db", url, cwd=tmp_path))
    summary = json.loads(_ok(orch("study", "step-cut", "s", "--variant", cand, "--baseline", base, "--runs", "2",
                                  "--json", "--db", url, cwd=tmp_path)).stdout)
    # baseline 3800 ms, candidate 3630 ms: the matching cut is 100 x 3630/3800 = 95.5 steps, planned -4%/0/+4%
    assert summary["args"]["step_counts"] == [92, 96, 99]
    db = Database(url)
    attrs = _kinds(url)
    cut = [r for r in rows_of(db, "s") if attrs[r.number].get("kind") == "step_cut"]
    assert sorted(attrs[r.number]["step_cut"] for r in cut) == [92, 92, 96, 96, 99, 99]
    for r in cut:
        steps = attrs[r.number]["step_cut"]
        assert r.command[r.command.index("--steps", r.command.index("--steps") + 1) + 1] == str(steps)
        assert r.metrics["steps"] == steps
    result = summary["step_cut"]
    assert result["beats"] is beats
    lo, hi = result["interval"]
    assert (hi < 0) if beats else (lo > 0)
    status = _ok(orch("study", "status", "s", "--db", url, cwd=tmp_path)).stdout
    assert ("beats a simple step-count decrease" in status) == beats
    assert ("does NOT beat a simple step-count decrease" in status) == (not beats)
