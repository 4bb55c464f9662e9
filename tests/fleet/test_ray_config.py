"""Ray settings of the fleet file and the commands' errors when no cluster runs (no Ray process is started here)."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.config.errors import ConfigError
from orchestrator.config.fleet_file import load_fleet
from orchestrator.launchers.ray_cluster import node_argv, node_env, start_mode
from tests.conftest import orch, stand_in_study
from tests.helpers.ray_lab import free_port

GOOD = {"defaults": {"launcher": "ray", "gpus": "none", "ray": {"address": "127.0.0.2:6390", "auth": "disabled"}},
        "machines": [{"name": "ra", "host": "127.0.0.2"}, {"name": "rb", "host": "10.0.0.3", "known_hosts": "kh"}]}


def _write(tmp_path, doc) -> str:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_nodes_are_started_with_their_machine_resource_and_ip(tmp_path):
    fleet = load_fleet(_write(tmp_path, GOOD))
    ra, rb = fleet.machines
    assert (start_mode(ra), start_mode(rb)) == ("local", "ssh")
    head, worker = node_argv(ra, True, "local"), node_argv(rb, False, "ssh")
    assert worker[:3] == ["ray", "start", "--block"]
    assert '--resources={"machine:ra": 1}' in head and "--head" in head and "--port=6390" in head
    assert "--node-ip-address=10.0.0.3" in worker and "--address=127.0.0.2:6390" in worker and "--head" not in worker
    assert "--num-gpus=0" in head
    assert node_env(ra)["RAY_AUTH_MODE"] == "disabled" and node_env(ra)["RAY_USAGE_STATS_ENABLED"] == "0"


def test_token_auth_passes_the_token_files_path_never_the_token(tmp_path):
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    doc["defaults"]["ray"] = {"address": "127.0.0.2:6390", "token_file": "/etc/orch/ray_token"}
    env = node_env(load_fleet(_write(tmp_path, doc)).machines[0])
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == "/etc/orch/ray_token"


@pytest.mark.parametrize("change, where, words", [
    (lambda d: d["defaults"]["ray"].pop("address"), "machines[0]", "needs the cluster's address"),
    (lambda d: d["defaults"]["ray"].update(address="127.0.0.2"), "defaults.ray.address", "is not HOST:PORT"),
    (lambda d: d["defaults"]["ray"].update(address="h:99999"), "defaults.ray.address", "is not HOST:PORT"),
    (lambda d: d["machines"][1].update(ray={"address": "127.0.0.9:1"}), "machines[1].ray.address", "names cluster"),
    (lambda d: d["machines"][1].update(host="127.0.0.2"), "machines[1].host", "are both node 127.0.0.2"),
    (lambda d: d["defaults"]["ray"].update(auth="none"), "defaults.ray.auth", "'token' or 'disabled'"),
    (lambda d: d["defaults"]["ray"].update(start="rsh"), "defaults.ray.start", "'auto', 'local' or 'ssh'"),
    (lambda d: d["defaults"]["ray"].update(dead_after_s=0), "defaults.ray.dead_after_s", "greater than 0"),
    (lambda d: d["defaults"]["ray"].update(adress="x"), "defaults.ray.adress", "unknown field"),
])
def test_bad_ray_settings_name_the_file_line_field_and_fix(tmp_path, change, where, words):
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    change(doc)
    with pytest.raises(ConfigError) as caught:
        load_fleet(_write(tmp_path, doc))
    message = str(caught.value)
    assert "fleet.yaml:" in message and where in message and words in message and "fix:" in message, message


def test_fleet_up_without_ray_machines_or_without_a_head_is_refused(tmp_path):
    path = _write(tmp_path, {"machines": [{"name": "local", "launcher": "local"}]})
    result = orch("fleet", "up", "--fleet", path, cwd=tmp_path)
    assert result.returncode == 2 and "no `launcher: ray` machine" in result.stderr and "Traceback" not in result.stderr
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    doc["defaults"]["ray"]["address"] = "127.0.0.7:6390"
    result = orch("fleet", "down", "--fleet", _write(tmp_path, doc), cwd=tmp_path)
    assert result.returncode == 2 and "no ray machine has host 127.0.0.7" in result.stderr
    assert "fix:" in result.stderr and "Traceback" not in result.stderr


def test_a_study_on_a_cluster_that_is_not_up_says_how_to_start_it(tmp_path):
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    doc["defaults"]["ray"]["address"] = f"127.0.0.2:{free_port('127.0.0.2')}"  # nothing listens there
    doc["machines"] = doc["machines"][:1]
    fleet = _write(tmp_path, doc)
    db = f"sqlite:///{tmp_path / 'orch.db'}"
    assert orch("study", "create", "s", "--from", str(stand_in_study(tmp_path)), "--db", db, cwd=tmp_path).returncode == 0
    result = orch("study", "run", "s", "--db", db, "--fleet", fleet, "--plain", cwd=tmp_path, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no reachable machine" in result.stderr and "orch fleet status" in result.stderr, result.stderr
    status = orch("fleet", "status", "--fleet", fleet, "--json", "--db", db, cwd=tmp_path)
    assert status.returncode == 0 and "cannot reach the Ray head" in status.stdout and "orch fleet up" in status.stdout


def test_a_trial_takes_its_share_of_the_machine_and_all_gpus_take_all_of_it(tmp_path):
    from orchestrator.launchers.base import Slot
    from orchestrator.launchers.ray import RayResourceError, check_feasible, trial_request

    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    doc["defaults"]["gpus"] = "auto"
    doc["machines"][1]["cpu_slots"] = 3
    ra, rb = load_fleet(_write(tmp_path, doc)).machines
    node = {"Resources": {"GPU": 8.0, "CPU": 64.0, "machine:ra": 1.0}}
    whole = trial_request(ra, Slot("ra", 0, gpu_ids=tuple(range(8))), node)
    assert whole == {"num_cpus": 0, "num_gpus": 8, "resources": {"machine:ra": 1.0}}  # exclusive
    assert trial_request(ra, Slot("ra", 1, gpu_ids=(2, 3)), node)["resources"] == {"machine:ra": 0.25}
    assert trial_request(rb, Slot("rb", 0), {"Resources": {"CPU": 2.0}})["resources"] == {"machine:rb": 0.3333}
    assert trial_request(ra, Slot("ra", 0), {"Resources": {"CPU": 2.0}}, cpu_count=4)["resources"] == {"machine:ra": 0.25}
    check_feasible(ra, node, whole)
    with pytest.raises(RayResourceError, match=r"GPU 8 \(node has 4\)"):
        check_feasible(ra, {"Resources": {"GPU": 4.0, "machine:ra": 1.0}}, whole)
    with pytest.raises(RayResourceError, match="no live node of the cluster offers machine:ra"):
        check_feasible(ra, None, whole)
