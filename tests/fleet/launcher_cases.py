"""The launchers under the contract suite (test_launcher_contract.py): one `LauncherCase` per launcher, each on real
infrastructure of this machine. A new launcher adds its case here (a function and a line in `CASES`).

| case | machine | lost machine |
| --- | --- | --- |
| local | this host | - (the controller's own host cannot be lost without the controller) |
| ssh | a real sshd on 127.0.2.N (tests/fleet/conftest.py `ssh_lab`) | its sshd killed (SIGKILL, sessions too) |
| ray | a node of a two-node Ray cluster on 127.0.0.8/.9 (`orch fleet up`) | the worker node's raylet killed |
| slurm | a node of the session's Slurm cluster (tests/helpers/slurm_lab.py) | `scontrol update state=down` |
| fake | bench/fake_fleet.py's simulated machine: jobs are timers, not commands | - |
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from orchestrator.config.fleet import Machine
from orchestrator.launchers.base import JobHandle, Launcher, Slot
from tests.conftest import REPO
from tests.helpers.ray_lab import RayLab

CASES = ["local", "ssh", "ray", "slurm", "fake"]


@dataclass
class LauncherCase:
    name: str
    make: Callable[[], Launcher]  # a new launcher: a new controller's
    machine: Machine
    slot: Slot
    runs_commands: bool = True  # the job is the argv it is given (the fake fleet's are timers)
    lose: Callable[[], None] | None = None  # makes the machine go away mid-job
    lost_bound_s: float = 30.0  # ... and its trial must end within this
    stub: dict = field(default_factory=dict)  # how controller_stub.py builds the launcher and the machine
    env: dict = field(default_factory=dict)  # environment of the stub process
    unreachable: Machine | None = None  # a machine of this launcher whose probe fails

    def job_dir(self, handle: JobHandle) -> Path:
        """Where the job runs (its cwd): the remote trial directory for ssh and ray, else the trial's workdir."""
        return Path(getattr(handle, "remote_dir", None) or handle.workdir)


def local_case(request, base: Path) -> LauncherCase:
    from orchestrator.launchers.local import LocalLauncher

    machine = Machine(name="here", launcher="local", gpus="none", cpu_slots=2, workdir=str(base))
    return LauncherCase("local", lambda: LocalLauncher(kill_grace_s=1), machine, Slot("here", 0),
                        stub={"factory": "orchestrator.launchers.local:LocalLauncher", "options": {"kill_grace_s": 1}})


def ssh_case(request, base: Path) -> LauncherCase:
    from orchestrator.launchers.ssh import SshLauncher

    lab = request.getfixturevalue("ssh_lab")
    target = lab.machine(f"contract-{len(lab.machines)}")  # its own sshd: the lost-machine test kills it
    machine = Machine(**target.fleet_entry(base / "remote"))
    gone = Machine(**{**target.fleet_entry(base / "remote"), "name": "gone", "port": 1})  # nothing listens on port 1
    options = {"keepalive_s": 0.5, "dead_after_s": 2.0, "kill_grace_s": 1.0}
    return LauncherCase("ssh", lambda: SshLauncher(**options), machine, Slot(machine.name, 0), lose=target.kill,
                        lost_bound_s=10, stub={"factory": "orchestrator.launchers.ssh:SshLauncher", "options": options},
                        unreachable=gone)


def ray_case(request, base: Path) -> LauncherCase:
    from orchestrator.launchers.ray import RayLauncher

    lab = request.getfixturevalue("contract_ray_lab")
    fields = {**lab.defaults, **lab.machines[1], "workdir": str(base / "node")}
    machine = Machine(**fields)
    gone = Machine(**{**fields, "name": "nonode", "host": "127.0.0.99"})  # no node offers machine:nonode

    def lose() -> None:
        os.kill(lab.raylet_pid(machine.name), signal.SIGKILL)

    return LauncherCase("ray", lambda: RayLauncher(kill_grace_s=1), machine, Slot(machine.name, 0), lose=lose,
                        lost_bound_s=30, stub={"factory": "orchestrator.launchers.ray:RayLauncher",
                                               "options": {"kill_grace_s": 1}}, env=lab.env, unreachable=gone)


def slurm_case(request, base: Path) -> LauncherCase:
    from orchestrator.launchers.slurm import SlurmLauncher

    lab = request.getfixturevalue("slurm_lab")
    fields = {"name": "sb", "launcher": "slurm", "gpus": "auto", "cpu_slots": 2, "workdir": str(base),
              "slurm": {"env": lab.env, "poll_s": 0.2}}
    machine = Machine(**fields)
    gone = Machine(**{**fields, "name": "nosuchnode"})

    def lose() -> None:
        lab.set_node("sb", "down", "contract: lost machine")
        request.addfinalizer(lambda: lab.resume("sb"))

    return LauncherCase("slurm", SlurmLauncher, machine, Slot("sb", 0, gpu_ids=(0,)), lose=lose, lost_bound_s=10,
                        stub={"factory": "orchestrator.launchers.slurm:SlurmLauncher", "options": {}},
                        unreachable=gone)


def fake_case(request, base: Path) -> LauncherCase:
    sys.path.insert(0, str(REPO / "bench"))  # as tests/test_bench_dispatch.py: bench/ is no package
    from fake_fleet import FakeFleetLauncher

    machine = Machine(name="sim", launcher="local", gpus=8, workdir=str(base))
    made: list = []

    def make() -> Launcher:
        made.append(FakeFleetLauncher([0.6]))
        return made[-1]

    request.addfinalizer(lambda: [launcher.close() for launcher in made])
    return LauncherCase("fake", make, machine, Slot("sim", 0, gpu_ids=(0,)), runs_commands=False,
                        stub={"factory": "fake_fleet:FakeFleetLauncher", "options": {"durations": [30.0]}},
                        env={"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'bench'}"})


FACTORIES = {"local": local_case, "ssh": ssh_case, "ray": ray_case, "slurm": slurm_case, "fake": fake_case}


@pytest.fixture(scope="module")
def contract_ray_lab(tmp_path_factory):
    """A two-node Ray cluster of the contract suite's own (its worker is killed by the lost-machine test)."""
    lab = RayLab(tmp_path_factory.mktemp("ray-contract"), hosts=("127.0.0.8", "127.0.0.9"), names=("rc", "rd"))
    started = lab.up()
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        yield lab
    finally:
        import ray

        from orchestrator.launchers import ray_common

        ray.shutdown()  # this process joined it as a driver; one cluster per process
        ray_common._address = None
        lab.down()


__all__ = ["CASES", "FACTORIES", "LauncherCase", "contract_ray_lab"]
