"""Security, end to end through `orch study run` (issue 8):

- parameter values full of shell metacharacters reach the job as data and never execute, on the SSH path and
  on the SSH + podman container path (the launcher-level check of the same is test_ssh.py's
  test_shell_metacharacters_reach_the_job_as_data; unknown and changed host keys: test_ssh.py's
  test_unknown_host_key_is_refused, test_changed_host_key_is_refused and test_orch_fleet_trust_records_the_key,
  and here a study on an untrusted machine runs nothing);
- a secret (trainer.secret_env, HF_TOKEN handed to a podman container) reaches the job but appears nowhere we
  keep: every table of the database (Optuna's too), the controller's output, the trial logs (local copy and the
  machine's), every file under the runs, every export format, and every status view (plain and --json).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import pytest
import yaml
from sqlalchemy import inspect, text

from db import Database
from tests.conftest import orch

ECHO_JOB = '''\
import hashlib, json, os, sys
print("@@metrics " + json.dumps({"event": "start"}))
print("ARGS " + json.dumps({"argv": sys.argv[1:], "env": os.environ.get("NASTY"),
                            "token_sha256": hashlib.sha256(os.environ.get("HF_TOKEN", "").encode()).hexdigest()}))
print("@@metrics " + json.dumps({"event": "final", "step": 1, "total_steps": 1, "val_loss": 3.0,
                                 "train_time_ms": 1000, "exit_reason": "completed"}))
'''
NASTY = ["$(touch {m}/dollar)", "; touch {m}/semicolon; echo", "`touch {m}/backtick`", "a'b\"c\\d", "line1\nline2 $HOME",
         "&& touch {m}/and", "| touch {m}/pipe", "> {m}/redirect", "${{IFS}}touch${{IFS}}{m}/ifs", "*"]


def _setup(tmp_path: Path, ssh_lab, podman_image, name: str, container: bool, secret_env: list[str]) -> tuple[Path, Path, Path]:
    """A folder shared with the machine (and mounted in its container at the same path), the echo job in it,
    a fleet of one ssh machine, and a study whose categorical parameter takes every nasty value once."""
    shared = tmp_path / "shared"
    (shared / "markers").mkdir(parents=True)
    (shared / "echo_job.py").write_text(ECHO_JOB)
    machine = ssh_lab.machine(name)
    entry = machine.fleet_entry(tmp_path / "remote", cpu_slots=3)
    python = "python3"
    if container:
        entry["container"] = {"runtime": "podman", "image": podman_image.name, "mounts": [f"{shared}:{shared}"]}
    else:
        python = "{python}"
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"machines": [entry]}, sort_keys=False))
    values = [v.format(m=shared / "markers") for v in NASTY]
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "trainer": {"command": [python, str(shared / "echo_job.py")], "log_format": "orch", "secret_env": secret_env},
        "parameters": {"value": {"type": "categorical", "choices": values, "flag": "--value", "env": "NASTY"}},
        "objective": {"minimize": "train_time_s", "subject_to": ["val_loss <= 3.28"]},
        "sampler": {"name": "grid", "seed": 0}, "budget": {"max_trials": len(values), "parallel": 3}}, sort_keys=False))
    return shared, fleet, study


def _podman_env(podman_image) -> dict:
    options = podman_image.options
    return {"ORCH_PODMAN_ROOT": options.root, "ORCH_PODMAN_RUNROOT": options.runroot, "ORCH_PODMAN_TMPDIR": options.tmpdir}


def _job_reports(db: Database) -> dict[str, dict]:
    from tests.orch._checks import rows_of

    out = {}
    for row in rows_of(db, "s"):
        assert row.state == "complete", (row.number, row.state, row.note)
        line = next(l for l in Path(row.log_path).read_text().splitlines() if l.startswith("ARGS "))
        out[row.params["value"]] = json.loads(line[5:])
        assert row.command[-2:] == ["--value", row.params["value"]]  # stored exactly as the job got it
    return out


@pytest.mark.slow
@pytest.mark.parametrize("container", [False, True], ids=["ssh", "ssh+podman"])
def test_shell_metacharacters_in_parameter_values_never_execute(ssh_lab, podman_image, tmp_path, container):
    shared, fleet, study = _setup(tmp_path, ssh_lab, podman_image, f"meta-{int(container)}", container, [])
    env = _podman_env(podman_image)
    assert orch("study", "create", "s", "--from", str(study), "--db", f"sqlite:///{tmp_path / 'orch.db'}",
                cwd=tmp_path).returncode == 0
    result = orch("study", "run", "s", "--fleet", str(fleet), "--db", f"sqlite:///{tmp_path / 'orch.db'}", "--plain",
                  cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    reports = _job_reports(Database(f"sqlite:///{tmp_path / 'orch.db'}"))
    values = [v.format(m=shared / "markers") for v in NASTY]
    assert sorted(reports) == sorted(values)
    for value, got in reports.items():
        assert got["argv"] == ["--value", value] and got["env"] == value  # as data, byte for byte
    assert list((shared / "markers").iterdir()) == []  # nothing executed


def test_a_study_on_a_machine_with_an_unknown_host_key_runs_nothing(ssh_lab, tmp_path):
    machine = ssh_lab.machine("untrusted", trusted=False)
    machine.known_hosts.write_text("")
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"machines": [machine.fleet_entry(tmp_path / "remote")]}))
    (tmp_path / "job.py").write_text("open('ran', 'w')\n")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "trainer": {"command": ["{python}", str(tmp_path / "job.py")]},
        "parameters": {"x": {"type": "float", "low": 0, "high": 1}},
        "objective": {"minimize": "train_time_s"}, "budget": {"max_trials": 1}}))
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert orch("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path).returncode == 0
    result = orch("study", "run", "s", "--fleet", str(fleet), "--db", url, cwd=tmp_path)
    assert result.returncode == 2 and "no reachable machine" in result.stderr and "Traceback" not in result.stderr
    status = json.loads(orch("fleet", "status", "--fleet", str(fleet), "--db", url, "--json", cwd=tmp_path).stdout)
    (row,) = status["machines"]
    assert not row["reachable"] and "orch fleet trust untrusted" in json.dumps(row)
    assert not list(tmp_path.rglob("ran")) and not (tmp_path / "remote").exists()


def _dump_everything(url: str) -> str:
    db = Database(url, create=False)
    parts = []
    with db.engine.connect() as conn:
        tables = sorted(inspect(conn).get_table_names())
        assert {"orch_trials", "orch_events", "trials", "trial_params", "trial_user_attributes",
                "trial_system_attributes", "studies"} <= set(tables)
        for table in tables:
            parts.append(table + "\n" + "\n".join(map(repr, conn.execute(text(f'SELECT * FROM "{table}"')).all())))
    db.dispose()
    return "\n".join(parts)


@pytest.mark.slow
def test_a_secret_reaches_the_container_and_appears_nowhere_we_keep(ssh_lab, podman_image, tmp_path):
    token = "hf_" + secrets.token_hex(16)
    shared, fleet, study = _setup(tmp_path, ssh_lab, podman_image, "secretive", True, ["HF_TOKEN"])
    spec = yaml.safe_load(study.read_text())
    spec["parameters"]["value"]["choices"] = ["a", "b"]
    spec["budget"] = {"max_trials": 2, "parallel": 2}
    study.write_text(yaml.safe_dump(spec, sort_keys=False))
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    env = {**_podman_env(podman_image), "HF_TOKEN": token}
    outputs = [orch("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path, env=env)]
    assert outputs[0].returncode == 0, outputs[0].stderr
    outputs.append(orch("study", "run", "s", "--fleet", str(fleet), "--db", url, "--plain", cwd=tmp_path, env=env,
                        timeout=300))
    assert outputs[-1].returncode == 0, outputs[-1].stdout[-2000:] + outputs[-1].stderr[-2000:]
    db = Database(url)
    reports = _job_reports(db)
    assert {r["token_sha256"] for r in reports.values()} == {hashlib.sha256(token.encode()).hexdigest()}  # it arrived
    exports = tmp_path / "exports"
    for fmt in ("md", "html", "csv", "json"):
        outputs.append(orch("export", "s", "--format", fmt, "--db", url, cwd=tmp_path, env=env))
        outputs.append(orch("export", "s", "--format", fmt, "--out", str(exports / f"s.{fmt}"), "--db", url,
                            cwd=tmp_path, env=env))
    outputs.append(orch("export", "s", "--format", "md", "--plots", "--out", str(exports / "plots" / "s.md"), "--db",
                        url, cwd=tmp_path, env=env))
    for args in (["study", "status", "s"], ["study", "status", "s", "--json"], ["study", "list"],
                 ["study", "list", "--json"], ["fleet", "status", "--fleet", str(fleet)],
                 ["fleet", "status", "--fleet", str(fleet), "--json"]):
        outputs.append(orch(*args, "--db", url, cwd=tmp_path, env=env))
    assert all(o.returncode == 0 for o in outputs), [o.stderr[-500:] for o in outputs if o.returncode]
    assert all("Traceback" not in o.stdout + o.stderr for o in outputs)
    texts = {"database (every table)": _dump_everything(url)}
    texts.update({f"output of command {i}": o.stdout + o.stderr for i, o in enumerate(outputs)})
    kept = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".db", ".db-wal", ".db-shm")]
    assert any(p.name == "train.log" for p in kept) and any(p.name == "job.log" for p in kept)
    assert len(list(exports.rglob("*"))) >= 5
    for path in kept:
        texts[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    leaks = [where for where, content in texts.items() if token in content]
    assert leaks == [], f"the secret appears in: {leaks}"
    assert os.environ.get("HF_TOKEN") != token
