"""Bad arguments of the record-grade commands: one message naming the option and the fix, exit 2, no traceback,
and the database as it was (run in this process through the CLI's entry point)."""

from __future__ import annotations

from orchestrator.cli.main import main
from tests.conftest import dump_database, orch, stand_in_study


def test_bad_arguments_leave_the_database_unchanged(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert orch("study", "create", "s", "--from", str(stand_in_study(tmp_path, threshold=3.30, max_trials=2)),
                "--db", url, cwd=tmp_path).returncode == 0
    assert orch("study", "run", "s", "--db", url, cwd=tmp_path).returncode == 0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    cases = [
        (["study", "confirm", "s", "--top", "1"], "--top and --repeats go together"),
        (["study", "confirm", "s", "--top", "1", "--repeats", "2", "--paired"], "--paired plans its own runs"),
        (["study", "confirm", "s", "--paired"], "--paired needs the baseline"),
        (["study", "confirm", "s", "--paired", "--baseline", "stage1=0.9,stage2=0.2"], "stage1=0.9 is outside its range"),
        (["study", "confirm", "s", "--first-look", "5", "--max-runs", "4"], "--first-look: the first look needs 2..4 runs"),
        (["study", "confirm", "s", "--track", "golf"], "unknown track 'golf'"),
        (["study", "confirm", "s", "--track", "parameter-golf", "--sigma", "0.001"], "--best-score"),
        (["study", "confirm", "s", "--variant", "#99"], "no valid trial #99"),
        (["study", "step-cut", "s", "--baseline", "stage1=0.3,stage2=0.3"], "does not say how its trainer is told its step count"),
        (["record", "s", "--track", "golf", "--out", str(tmp_path / "r")], "--track 'golf' is not a track"),
        (["record", "s", "--track", "modded-nanogpt", "--out", str(tmp_path / "full")], "exists and is not an empty folder"),
        (["record", "s", "--track", "modded-nanogpt", "--out", str(tmp_path / "r")], "no confirmation runs of any variant"),
    ]
    before = dump_database(url)
    for args, message in cases:
        code = main([*args, "--db", url])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert "fix" in err or "Invalid value" in err, (args, err)
    assert dump_database(url) == before and not (tmp_path / "r").exists()
