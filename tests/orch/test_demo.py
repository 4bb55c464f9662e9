"""The README's demo study with the real tiny trainer (python -m trainer) under the real controller, shortened
to 2 trials of 80 steps so the test takes seconds: the trainer's metric lines reach the database and the
stage durations the sampler chose reach the trainer."""

from __future__ import annotations

import yaml

from db import Database
from tests.conftest import REPO, orch

from ._checks import assert_agrees_with_optuna


def test_demo_study_runs_the_real_trainer(tmp_path):
    spec = yaml.safe_load((REPO / "studies" / "demo.yaml").read_text())
    spec["trainer"]["command"] += ["--num-steps", "80", "--val-every", "40"]
    spec["trainer"]["code_dir"] = str(REPO)
    spec["budget"] = {"max_trials": 2, "parallel": 2}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert orch("study", "create", "demo", "--from", str(path), "--db", url, cwd=tmp_path).returncode == 0
    result = orch("study", "run", "demo", "--db", url, cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = assert_agrees_with_optuna(Database(url), "demo")
    assert [r.state for r in rows] == ["complete", "complete"]
    for row in rows:
        assert 0 < row.value < 120 and 0.5 < row.metrics["val_loss"] < 6
        assert row.metrics["steps"] == 80 and row.versions["torch"].startswith("2.")
        assert row.code_revision and len(row.code_revision) == 40  # this repository's commit is recorded
        assert any(name.startswith("trainer/") for name in row.file_checksums)
        durations = row.command[row.command.index("--stage-durations") + 1]
        assert [float(x) for x in durations.split(",")] == [round(row.params[k], 4) for k in ("stage1", "stage2", "stage3")]
    assert "## Round 1" in result.stdout and "study 'demo' finished" in result.stdout
