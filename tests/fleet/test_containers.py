"""Container commands (docker, podman, none) and a study whose trials run in a podman container over SSH."""

from __future__ import annotations

import queue
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db import Database, MetricPointRow, TrialRow
from orchestrator.config.fleet import ContainerSpec, Machine
from orchestrator.config.fleet_file import load_fleet
from orchestrator.run.controller import Controller
from orchestrator.jobs import JobSpec
from orchestrator.launchers.base import ExitEvent, LineEvent, Slot
from orchestrator.launchers.containers import (ContainerError, PodmanOptions, container_command, local_container,
                                               parse_image_id)
from orchestrator.launchers.ssh import SshLauncher
from orchestrator.study.lifecycle import create_study
from tests.conftest import REPO, stand_in_study

JOB = JobSpec("st", 12, ["python", "train.py", "--lr", "0.1"], {"A": "1"}, secret_env={"HF_TOKEN": "hf_secret_value"})


def test_docker_command():
    spec = ContainerSpec(runtime="docker", image="nvcr.io/x:1", mounts=["/data:/data:ro"], env={"NCCL_DEBUG": "WARN"})
    cc = container_command(spec, JOB, Slot("m", 0, gpu_ids=(0, 1)), "/runs/st/trial-0012", data_path="/ds",
                           extra_env={"A": "1", "CUDA_VISIBLE_DEVICES": "0,1"}, name="orch-st-0012-x")
    assert cc.argv == ["docker", "run", "--rm", "--init", "--name", "orch-st-0012-x", "--ipc=host",
                       "--gpus", '"device=0,1"', "-v", "/ds:/ds", "-v", "/runs/st/trial-0012:/runs/st/trial-0012",
                       "-v", "/data:/data:ro", "-w", "/runs/st/trial-0012", "-e", "NCCL_DEBUG=WARN", "-e", "A=1",
                       "-e", "CUDA_VISIBLE_DEVICES=0,1", "-e", "HF_TOKEN", "nvcr.io/x:1", "python", "train.py", "--lr", "0.1"]
    assert cc.inspect == ["docker", "image", "inspect", "--format", "{{.Id}}", "nvcr.io/x:1"]
    assert cc.cleanup == ["docker", "rm", "-f", "orch-st-0012-x"]
    assert "hf_secret_value" not in " ".join(cc.argv + cc.cleanup + cc.inspect)


def test_podman_command_has_the_flags_that_work_here():
    options = PodmanOptions(root="/r", runroot="/rr", tmpdir="/t")
    cc = container_command(ContainerSpec(runtime="podman", image="localhost/i:1"), JOB, Slot("m", 0), "/w",
                           podman=options, name="n")
    assert cc.argv[:18] == ["podman", "--root", "/r", "--runroot", "/rr", "--tmpdir", "/t", "--cgroup-manager=cgroupfs",
                            "--events-backend=file", "--runtime", "runc", "run", "--rm", "--init", "--name", "n",
                            "--network=none", "--ulimit"]
    assert "nofile=1024:1024" in cc.argv and "nproc=1000:1000" in cc.argv
    assert cc.argv[-5:] == ["localhost/i:1", "python", "train.py", "--lr", "0.1"]
    assert ["-e", "HF_TOKEN"] == cc.argv[cc.argv.index("HF_TOKEN") - 1: cc.argv.index("HF_TOKEN") + 1]
    assert "hf_secret_value" not in " ".join(cc.argv)
    gpu = container_command(ContainerSpec(runtime="podman", image="i"), JOB, Slot("m", 0, gpu_ids=(2, 3)), "/w",
                            podman=options, name="n")
    assert ["--device", "nvidia.com/gpu=2", "--device", "nvidia.com/gpu=3"] == gpu.argv[gpu.argv.index("--device"):][:4]


def test_runtime_none_and_bad_input():
    assert container_command(ContainerSpec(), JOB, Slot("m", 0), "/w").argv == JOB.argv
    launch = local_container(Machine(name="l"), JOB, Slot("l", 0), "/w")
    assert (launch.argv, launch.image_id, launch.cleanup) == (JOB.argv, None, None)
    with pytest.raises(ContainerError, match="absolute"):
        container_command(ContainerSpec(runtime="docker", image="i"), JOB, Slot("m", 0), "relative/dir")
    bad = JobSpec("st", 1, ["x"], {}, secret_env={"NOT-A-NAME": "v"})
    with pytest.raises(ContainerError, match="NOT-A-NAME"):
        container_command(ContainerSpec(runtime="docker", image="i"), bad, Slot("m", 0), "/w")
    assert parse_image_id("2b5b" * 16 + "\n") == "sha256:" + "2b5b" * 16
    assert parse_image_id("Error: no such image") is None


@pytest.mark.slow
def test_study_runs_in_a_podman_container_over_ssh(ssh_lab, podman_image, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = ssh_lab.machine("boxed")
    container = {"runtime": "podman", "image": podman_image.name, "mounts": [f"{REPO / 'tests' / 'helpers'}:/trainer:ro"],
                 "env": {"ORCH_IN_CONTAINER": "1"}}
    fleet = load_fleet(_fleet_file(tmp_path, [m.fleet_entry(tmp_path / "remote", container=container)]))
    study = stand_in_study(tmp_path, max_trials=2, parallel=1)
    spec = yaml.safe_load(study.read_text())
    spec["trainer"]["command"] = ["python3", "/trainer/stand_in_trainer.py", *spec["trainer"]["command"][2:],
                                  "--cache-probe"]  # its compile cache's stand-in (orchestrator/warm)
    study.write_text(yaml.safe_dump(spec, sort_keys=False))
    db = Database(f"sqlite:///{tmp_path / 'orch.db'}")
    create_study(db, "s", study)
    launcher = SshLauncher(keepalive_s=0.5, dead_after_s=3, podman=podman_image.options, kill_grace_s=1)
    try:
        progress = Controller(db, "s", fleet, launchers={"ssh": launcher}, heartbeat_s=0.5).run()
        assert progress.done == 2
        with db.session() as s:
            rows = s.scalars(select(TrialRow).order_by(TrialRow.number)).all()
            for row in rows:
                assert row.state == "complete" and row.container_image == podman_image.name
                assert row.container_image_id == podman_image.image_id
                assert row.command[0] == "podman" and "--network=none" in row.command and podman_image.name in row.command
                assert s.scalars(select(MetricPointRow).where(MetricPointRow.trial_id == row.id)).first() is not None
        # warm machine: the machine's .orch-warm is mounted into the container; the second trial finds the first
        # one's cache entry (written inside the container, kept on the machine)
        root = tmp_path / "remote" / ".orch-warm"
        assert f"{root}:{root}" in rows[0].command
        probes = [[line.split()[2] for line in Path(row.log_path).read_text().splitlines()
                   if line.startswith("stand-in: cache ")] for row in rows]
        assert probes == [["created"], ["found"]]
        assert len(list(root.glob("cache/*/inductor/stand-in-*"))) == 1
        # cancel in a container: the job ignores TERM; the container is removed after the grace period
        machine = fleet.machine("boxed")
        events: queue.Queue = queue.Queue()
        job = JobSpec("s", 99, ["bash", "-c", "trap '' TERM; echo in-$ORCH_IN_CONTAINER-$SECRET_X; "
                                              "while true; do sleep 0.1; done"], {}, secret_env={"SECRET_X": "hidden"})
        handle = launcher.start(job, machine, Slot("boxed", 0), tmp_path / "local-99", events)
        assert "hidden" not in " ".join(handle.command) and ["-e", "SECRET_X"] == handle.command[
            handle.command.index("SECRET_X") - 1: handle.command.index("SECRET_X") + 1]
        first = events.get(timeout=30)
        assert isinstance(first, LineEvent) and first.line == "in-1-hidden\n"
        handle.cancel("test")
        deadline = time.monotonic() + 20
        while True:
            event = events.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(event, ExitEvent):
                break
        ps = subprocess.run(["podman", *podman_image.options.global_flags(), "ps", "-a", "--format", "{{.Names}}"],
                            capture_output=True, text=True, check=True).stdout
        assert ps.strip() == ""  # no container left behind
    finally:
        launcher.close()


@pytest.mark.slow
def test_local_container_hook_runs_the_job_in_podman(podman_image, tmp_path):
    """What LocalLauncher runs with the hook: the argv, the image ID, the secret by name from the env."""
    import os

    machine = Machine(name="local", container={"runtime": "podman", "image": podman_image.name})
    job = JobSpec("s", 1, ["bash", "-c", "echo $A-$TOKEN-$CUDA_VISIBLE_DEVICES-$PWD"], {"A": "a"},
                  secret_env={"TOKEN": "t0p"})
    launch = local_container(machine, job, Slot("local", 0), tmp_path, podman=podman_image.options)
    assert launch.image_id == podman_image.image_id and "t0p" not in " ".join(launch.argv)
    out = subprocess.run(launch.argv, env={**os.environ, **job.secret_env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"a-t0p--{tmp_path}"
    missing = Machine(name="local", container={"runtime": "podman", "image": "localhost/nope:1"})
    with pytest.raises(ContainerError, match="nope"):
        local_container(missing, job, Slot("local", 0), tmp_path, podman=podman_image.options)


def _fleet_file(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"machines": entries}, sort_keys=False))
    return path
