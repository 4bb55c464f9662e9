"""The ray launcher on a real two-node Ray cluster (127.0.0.2 head, 127.0.0.3 worker) that `orch fleet up` starts
from a fleet file (tests/helpers/ray_lab.py); one cluster for the module, `orch fleet down` at the end."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db import Database, MetricPointRow, TrialRow
from orchestrator.config.fleet_file import load_fleet
from orchestrator.jobs import JobSpec
from orchestrator.launchers import ray as ray_launcher
from orchestrator.launchers import ray_common
from orchestrator.launchers.base import ExitEvent, LineEvent, Slot
from tests.conftest import REPO, group_alive, orch, stand_in_study
from tests.helpers.ray_lab import RayLab, children, ray_study
from tests.orch._checks import assert_agrees_with_optuna

pytestmark = pytest.mark.slow  # a Ray cluster starts in ~10 s on 2 cores


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = RayLab(tmp_path_factory.mktemp("ray-lab"))
    started = lab.up()
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        yield lab
    finally:
        stopped = lab.down()
        assert stopped.returncode == 0, stopped.stderr + stopped.stdout
        assert all(lab.node_pid(n) is None or not Path(f"/proc/{lab.node_pid(n)}").exists() for n in lab.names)


@pytest.fixture
def in_process_cluster(lab):
    """This test process joins the lab's cluster as a driver; it leaves it afterwards (one cluster per process)."""
    yield load_fleet(lab.fleet)
    import ray

    ray.shutdown()
    ray_common._address = None


def _node_reports(log: Path) -> list[dict]:
    return [json.loads(line.split(" ", 1)[1]) for line in log.read_text().splitlines() if line.startswith("node-report ")]


def test_fleet_up_again_changes_nothing_and_status_shows_both_machines(lab, tmp_path):
    pids = {name: lab.node_pid(name) for name in lab.names}
    again = lab.up()
    assert again.returncode == 0, again.stderr
    assert "ra: head node already up" in again.stdout and "rb: worker node already up" in again.stdout
    assert {name: lab.node_pid(name) for name in lab.names} == pids
    status = orch("fleet", "status", "--fleet", str(lab.fleet), "--json", "--db", f"sqlite:///{tmp_path / 'o.db'}",
                  "--probe-timeout", "30", cwd=tmp_path, env=lab.env)
    assert status.returncode == 0, status.stderr
    machines = {m["name"]: m for m in json.loads(status.stdout)["machines"]}
    assert set(machines) == {"ra", "rb"}
    for machine in machines.values():
        assert machine["launcher"] == "ray" and machine["reachable"] is True and machine["state"] == "idle"
        assert machine["gpu_count"] == 0 and machine["cpu_slots"] == 1
    table = orch("fleet", "status", "--fleet", str(lab.fleet), "--db", f"sqlite:///{tmp_path / 'o.db'}",
                 "--probe-timeout", "30", cwd=tmp_path, env=lab.env)
    assert [line.split()[:3] for line in table.stdout.splitlines() if line.startswith(("ra ", "rb "))] == \
        [["ra", "ray", "idle"], ["rb", "ray", "idle"]]


def test_study_runs_its_trials_pinned_to_the_nodes_and_streams_metrics_live(lab, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'orch.db'}"
    study = ray_study(tmp_path / "ray.yaml", stand_in_study(tmp_path, extra_args=["--wall-s", "3"], max_trials=4,
                                                            parallel=2))
    assert orch("study", "create", "s", "--from", str(study), "--db", db_url, cwd=tmp_path).returncode == 0
    run = subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", "study", "run", "s", "--db", db_url,
                            "--fleet", str(lab.fleet), "--plain"], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env={**lab.env, **_env()})
    db = Database(db_url)
    live = None  # a metric point of a trial while its row still says running
    deadline = time.monotonic() + 120
    while run.poll() is None and time.monotonic() < deadline:
        with db.session() as s:
            live = live or s.execute(select(TrialRow.number).join(MetricPointRow, MetricPointRow.trial_id == TrialRow.id)
                                     .where(TrialRow.state == "running").limit(1)).first()
        time.sleep(0.1)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 0, out
    assert live is not None, "no metric point reached the database while a trial was running"
    rows = assert_agrees_with_optuna(db, "s")
    assert [r.state for r in rows] == ["complete"] * 4, [(r.number, r.state, r.note) for r in rows]
    assert {r.machine for r in rows} == {"ra", "rb"}
    for row in rows:
        (report,) = _node_reports(Path(row.log_path))
        assert report["node_name"] == row.machine  # the machine's env reached the job
        raylet = int(report["raylet_pid"])  # the job ran under the raylet of its machine's `ray start` process
        assert raylet in children(lab.node_pid(row.machine))
        assert report["cwd"] == str(lab.base / "nodes" / row.machine / "s" / f"trial-{row.number:04d}")
        assert (Path(report["cwd"]) / "job.log").read_text().count("@@metrics") >= 5  # the log kept on the node
        with db.session() as s:
            vals = s.scalars(select(MetricPointRow.step).where(MetricPointRow.trial_id == row.id,
                                                                MetricPointRow.kind == "val")).all()
        assert sorted(vals) == [25, 50, 75, 100]


def test_an_impossible_request_fails_at_once_with_the_reason(lab, in_process_cluster, tmp_path):
    """ra's node has no GPU: a trial asking for one would stay pending in Ray forever; here start() refuses it."""
    machine = in_process_cluster.machine("ra")
    job = JobSpec(study="s", trial=7, argv=[sys.executable, "-c", "print('never')"], env={})
    events: queue.Queue = queue.Queue()
    started = time.monotonic()
    with pytest.raises(ray_launcher.RayResourceError) as caught:
        ray_launcher.RayLauncher().start(job, machine, Slot("ra", 0, gpu_ids=(0,)), tmp_path / "t7", events)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "ra" in message and "GPU 1 (node has 0)" in message and "pending forever" in message and "fix:" in message
    assert events.empty()


def test_a_study_asking_for_gpus_the_nodes_lack_fails_its_trials_clearly(lab, tmp_path):
    """The fleet claims 1 GPU on rb, its Ray node has none: the trial fails its launch with the reason, no hang."""
    fleet = lab.write_fleet(tmp_path / "fleet.yaml", [{**lab.machines[1], "gpus": 1}])
    db_url = f"sqlite:///{tmp_path / 'orch.db'}"
    spec = yaml.safe_load(stand_in_study(tmp_path, max_trials=1, parallel=1, retries=0).read_text())
    spec["resources"] = {"gpus": 1}
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(spec))
    assert orch("study", "create", "g", "--from", str(tmp_path / "gpu.yaml"), "--db", db_url, cwd=tmp_path).returncode == 0
    started = time.monotonic()
    result = orch("study", "run", "g", "--db", db_url, "--fleet", str(fleet), "--plain", cwd=tmp_path,
                  env={**lab.env, **_env()}, timeout=120)
    assert time.monotonic() - started < 60
    (row,) = assert_agrees_with_optuna(Database(db_url), "g")
    assert (row.state, row.exit_reason) == ("failed", "launch_error"), result.stdout + result.stderr
    assert "GPU 1 (node has 0)" in row.note and "pending forever" in row.note


def test_cancel_kills_the_jobs_process_group_on_the_node(lab, in_process_cluster, tmp_path):
    machine = in_process_cluster.machine("rb")
    job = JobSpec(study="c", trial=3, argv=["bash", "-c", "echo started; sleep 600 & wait"], env={})
    events: queue.Queue = queue.Queue()
    handle = ray_launcher.RayLauncher(kill_grace_s=1).start(job, machine, Slot("rb", 0), tmp_path / "t3", events)
    assert isinstance(events.get(timeout=30), LineEvent)  # the first line streamed back
    pgid = int((Path(handle.remote_dir) / ".orch-job.pid").read_text())
    handle.cancel("test")
    exit_event = events.get(timeout=30)
    assert isinstance(exit_event, ExitEvent) and exit_event.returncode == 128 + 15 and exit_event.error is None
    deadline = time.monotonic() + 10
    while group_alive(pgid):
        assert time.monotonic() < deadline, "the job's process group outlived its cancel"
        time.sleep(0.05)


def _env() -> dict:
    return {"PYTHONPATH": str(REPO)}


def test_fleet_up_and_down_over_ssh(ssh_lab, tmp_path):
    """A worker node started over SSH (a real sshd on its loopback address), the head locally; then both stopped."""
    remote = ssh_lab.machine("ray-ssh")
    lab = RayLab(tmp_path, hosts=("127.0.0.12", remote.host), names=("head", "viassh"))
    lab.machines[1].update({"port": remote.port, "user": "root", "identity_file": str(remote.client_key),
                            "known_hosts": str(remote.known_hosts),
                            "ray": {"start": "ssh", "ray_command": [str(Path(sys.executable).parent / "ray")]}})
    lab.write_fleet(lab.fleet)
    try:
        up = lab.up()
        assert up.returncode == 0, up.stderr + up.stdout
        assert "head: head node started" in up.stdout and "viassh: worker node started" in up.stdout and "ssh)" in up.stdout
        pid = lab.node_pid("viassh")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--node-ip-address=" + remote.host.encode() in cmdline and b"--block" in cmdline
        status = orch("fleet", "status", "--fleet", str(lab.fleet), "--json", "--db", f"sqlite:///{tmp_path / 'o.db'}",
                      "--probe-timeout", "30", cwd=tmp_path, env=lab.env)
        assert [m["reachable"] for m in json.loads(status.stdout)["machines"]] == [True, True], status.stdout
        assert "already up" in lab.up().stdout
    finally:
        down = lab.down()
    assert down.returncode == 0, down.stderr + down.stdout
    assert "viassh: worker node stopped" in down.stdout and "head: head node stopped" in down.stdout
    assert not Path(f"/proc/{pid}").exists()
    assert "already down" in lab.down().stdout
