"""Every reason a machine gets no trials is shown and recorded (issue 18, item 3): a refused SSH host key (unknown,
or changed: which can mean someone is in the middle) no longer hides behind "no reachable machine" nor goes
unmentioned while the study runs on the good machines; drained and unlabelled machines too. `orch study run` names
the machine, the reason and the fix; `orch study status` and `orch fleet status` (plain and --json) show them;
each is a `machine.refused` event of the study. Real sshd machines (tests/fleet/conftest.py)."""

from __future__ import annotations

import json

from sqlalchemy import select

from db import Database, EventRow, TrialRow
from tests.conftest import orch, stand_in_study

from .conftest import cli, write_yaml


def test_host_key_refusals_are_named_while_the_study_runs_on_the_good_machine(ssh_lab, tmp_path):
    good = ssh_lab.machine("hk-good")
    unknown = ssh_lab.machine("hk-unknown", trusted=False)
    unknown.known_hosts.write_text("")
    changed = ssh_lab.machine("hk-changed", trusted=False)
    changed.known_hosts.write_text(f"[{changed.host}]:{changed.port} ssh-ed25519 {good.public_host_key()}\n")
    remote = tmp_path / "remote"
    fleet = write_yaml(tmp_path / "fleet.yaml", {"machines": [m.fleet_entry(remote) for m in (good, unknown, changed)]})
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert cli("study", "create", "s", "--from", str(stand_in_study(tmp_path, max_trials=2, parallel=2)),
               "--db", url)[0] == 0
    result = orch("study", "run", "s", "--db", url, "--fleet", str(fleet), "--plain", cwd=tmp_path, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert "machine hk-unknown gets no trials (host_key):" in output and "unknown host key ssh-ed25519 SHA256:" in output
    assert "fix: check the fingerprint on the machine" in output and "orch fleet trust hk-unknown" in output
    assert "machine hk-changed gets no trials (host_key):" in output and "HOST KEY CHANGED" in output
    assert "orch fleet trust hk-changed --replace" in output
    db = Database(url)
    with db.session() as s:
        assert {r.machine for r in s.scalars(select(TrialRow))} == {"hk-good"}
        refused = {(e.machine, e.new) for e in s.scalars(select(EventRow).where(EventRow.kind == "machine.refused"))}
    assert refused == {("hk-unknown", "host_key"), ("hk-changed", "host_key")}
    status = json.loads(cli("study", "status", "s", "--db", url, "--json")[1])
    by_machine = {r["machine"]: r for r in status["refused_machines"]}
    assert set(by_machine) == {"hk-unknown", "hk-changed"}
    assert "HOST KEY CHANGED" in by_machine["hk-changed"]["reason"] and "--replace" in by_machine["hk-changed"]["fix"]
    plain = cli("study", "status", "s", "--db", url)[1]
    assert "refused: machine hk-unknown (host_key): ssh machine 'hk-unknown'" in plain
    view = json.loads(cli("fleet", "status", "--fleet", str(fleet), "--db", url, "--json")[1])
    states = {m["name"]: (m["state"], [r["kind"] for r in m["refusals"]]) for m in view["machines"]}
    assert states == {"hk-good": ("idle", []), "hk-unknown": ("down", ["host_key"]),
                      "hk-changed": ("down", ["host_key"])}
    fleet_plain = cli("fleet", "status", "--fleet", str(fleet), "--db", url)[1]
    assert "hk-changed gets no trials (host_key):" in fleet_plain and "HOST KEY CHANGED" in fleet_plain


def test_a_study_no_machine_can_take_lists_every_machine_with_its_reason(ssh_lab, tmp_path):
    unknown = ssh_lab.machine("nk-unknown", trusted=False)
    unknown.known_hosts.write_text("")
    fleet = write_yaml(tmp_path / "fleet.yaml", {"machines": [unknown.fleet_entry(tmp_path / "remote")]})
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert cli("study", "create", "s", "--from", str(stand_in_study(tmp_path, max_trials=1, parallel=1)),
               "--db", url)[0] == 0
    code, out, err = cli("study", "run", "s", "--db", url, "--fleet", str(fleet), "--plain")
    assert code == 2 and "no reachable machine: machine nk-unknown: ssh machine 'nk-unknown'" in err
    assert "unknown host key" in err and "orch fleet trust nk-unknown" in err
    assert "machine nk-unknown gets no trials (host_key)" in out  # said as the run started, before the plan failed
    with Database(url).session() as s:
        assert [(e.machine, e.new) for e in s.scalars(select(EventRow).where(EventRow.kind == "machine.refused"))] == \
            [("nk-unknown", "host_key")]


def test_drained_and_unlabelled_machines_are_named_and_an_all_refused_fleet_stops_with_each_reason(tmp_path):
    fleet = write_yaml(tmp_path / "fleet.yaml", {"machines": [
        {"name": "free", "launcher": "local", "gpus": "none", "cpu_slots": 1, "labels": {"pool": "search"}},
        {"name": "drained", "launcher": "local", "gpus": "none", "cpu_slots": 1, "labels": {"pool": "search"}},
        {"name": "other-pool", "launcher": "local", "gpus": "none", "cpu_slots": 1, "labels": {"pool": "eval"}}]})
    path = stand_in_study(tmp_path, max_trials=2, parallel=2)
    spec = __import__("yaml").safe_load(path.read_text())
    spec["resources"] = {"labels": {"pool": "search"}}
    write_yaml(path, spec)
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert cli("study", "create", "s", "--from", str(path), "--db", url)[0] == 0
    assert cli("fleet", "drain", "drained", "--fleet", str(fleet), "--db", url)[0] == 0
    code, out, err = cli("study", "run", "s", "--db", url, "--fleet", str(fleet), "--plain")
    assert code == 0, out + err
    assert "machine drained gets no trials (drained): `orch fleet drain` set it draining (fix: `orch fleet undrain " \
           "drained` when it should take trials again)" in out
    assert "machine other-pool gets no trials (labels): it lacks resources.labels {'pool': 'search'}" in out
    status = json.loads(cli("study", "status", "s", "--db", url, "--json")[1])
    assert {(r["machine"], r["kind"]) for r in status["refused_machines"]} == {("drained", "drained"),
                                                                              ("other-pool", "labels")}
    assert cli("fleet", "drain", "free", "--fleet", str(fleet), "--db", url)[0] == 0
    assert cli("study", "create", "t", "--from", str(path), "--db", url)[0] == 0
    code, out, err = cli("study", "run", "t", "--db", url, "--fleet", str(fleet), "--plain")
    assert code == 2
    assert "no machine of the fleet can take a trial now (down or draining: drained, free; labels: other-pool)" in err
    assert "machine free gets no trials (drained)" in err and "`orch fleet undrain free`" in err
