"""Container commands for a job: docker, podman, or none. Shared by the local and the ssh launchers.

`container_command()` returns a `ContainerCommand`: the argv that runs the job in its container (a list,
never a shell line), the argv that removes the container if its client was killed, and the argv that
reads the image ID. Secrets (`JobSpec.secret_env`) are passed by NAME only (`-e NAME`): their values must
be in the environment of the runtime process (the launcher sets them there), so they never appear in an
argv, in `handle.command`, or in the database.

podman runs here only with its settings on the command line (ENVIRONMENT.md: the same settings in config
files made each run wait 20 s): `--root/--runroot/--tmpdir/--cgroup-manager=cgroupfs/--events-backend=file
--runtime runc`, `--network=none` and explicit ulimits. The roots are configurable (`PodmanOptions`, or the
environment variables ORCH_PODMAN_ROOT, ORCH_PODMAN_RUNROOT, ORCH_PODMAN_TMPDIR, ORCH_PODMAN_RUNTIME,
ORCH_PODMAN_NETWORK).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ..config.errors import OrchError
from ..config.fleet import ContainerSpec, Machine
from ..config.images import IMAGE_FIX, image_reference_problem
from ..records import JobSpec
from .base import Slot

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class ContainerError(OrchError):
    pass


@dataclass(frozen=True)
class PodmanOptions:
    root: str = "/var/lib/containers/storage"
    runroot: str = "/run/containers/storage"
    tmpdir: str = "/var/tmp"
    runtime: str = "runc"
    cgroup_manager: str = "cgroupfs"
    events_backend: str = "file"
    network: str = "none"
    ulimits: tuple[str, ...] = ("nofile=1024:1024", "nproc=1000:1000")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "PodmanOptions":
        environ = os.environ if environ is None else environ
        base = cls()
        return cls(root=environ.get("ORCH_PODMAN_ROOT", base.root), runroot=environ.get("ORCH_PODMAN_RUNROOT", base.runroot),
                   tmpdir=environ.get("ORCH_PODMAN_TMPDIR", base.tmpdir),
                   runtime=environ.get("ORCH_PODMAN_RUNTIME", base.runtime),
                   network=environ.get("ORCH_PODMAN_NETWORK", base.network))

    def global_flags(self) -> list[str]:
        return ["--root", self.root, "--runroot", self.runroot, "--tmpdir", self.tmpdir,
                f"--cgroup-manager={self.cgroup_manager}", f"--events-backend={self.events_backend}",
                "--runtime", self.runtime]


@dataclass
class ContainerCommand:
    argv: list[str]  # what runs the job; safe to store (no secret values)
    image: str | None = None
    name: str | None = None  # the container's name (for cleanup)
    cleanup: list[str] | None = None  # removes the container if its client was killed (`rm -f NAME`)
    inspect: list[str] | None = None  # prints the image ID
    secret_names: list[str] = field(default_factory=list)  # must be set in the runtime process's environment


def check_env_name(name: str, where: str = "environment") -> str:
    if not ENV_NAME.match(name):
        raise ContainerError(f"{where}: {name!r} is not a valid environment variable name "
                             "(fix: use letters, digits and underscores, not starting with a digit)")
    return name


def runtime_prefix(runtime: str, podman: PodmanOptions | None = None) -> list[str]:
    if runtime == "docker":
        return ["docker"]
    if runtime == "podman":
        return ["podman", *(podman or PodmanOptions.from_env()).global_flags()]
    raise ContainerError(f"container runtime {runtime!r} has no command prefix")


def image_id_argv(runtime: str, image: str, podman: PodmanOptions | None = None) -> list[str]:
    """`docker|podman image inspect --format {{.Id}} IMAGE`: prints the image ID (digest)."""
    return [*runtime_prefix(runtime, podman), "image", "inspect", "--format", "{{.Id}}", image]


def parse_image_id(output: str) -> str | None:
    for line in output.strip().splitlines():
        line = line.strip()
        if re.fullmatch(r"(sha256:)?[0-9a-f]{64}", line):
            return line if line.startswith("sha256:") else "sha256:" + line
    return None


def container_name(job: JobSpec) -> str:
    base = _NAME_SAFE.sub("-", f"orch-{job.study}-{job.trial:04d}")[:50].strip("-.") or "orch"
    return f"{base}-{secrets.token_hex(3)}"


def _gpu_flags(runtime: str, gpu_ids: tuple[int, ...]) -> list[str]:
    if not gpu_ids:
        return []
    if runtime == "docker":
        # docker needs the quotes inside the value when the list has a comma: --gpus '"device=0,1"'
        return ["--gpus", '"device=' + ",".join(map(str, gpu_ids)) + '"']
    # podman: CDI devices (nvidia-ctk cdi generate); they appear as 0..n-1 in the container
    flags: list[str] = []
    for gpu in gpu_ids:
        flags += ["--device", f"nvidia.com/gpu={gpu}"]
    return flags


def container_command(container: ContainerSpec, job: JobSpec, slot: Slot, workdir: str, *,
                      data_path: str | None = None, extra_env: dict[str, str] | None = None,
                      podman: PodmanOptions | None = None, name: str | None = None) -> ContainerCommand:
    """The command that runs `job.argv` in its container on `slot`, with `workdir` (an absolute path on the
    machine that runs the container) mounted at the same path and used as the working directory.

    `extra_env` (machine env, job env, CUDA/OMP settings) goes in as `-e K=V`; secrets as `-e NAME`.
    runtime `none`: the job's argv unchanged."""
    runtime = container.runtime
    if runtime == "none":
        return ContainerCommand(argv=list(job.argv))
    image = job.image or container.image
    if not image:
        raise ContainerError(f"runtime {runtime!r} needs an image (fix: set container.image in the fleet or "
                             "trainer.image in the study)")
    problem = image_reference_problem(image)
    if problem:  # the fleet and study files are checked when read; this guards studies stored before that
        raise ContainerError(f"{'trainer.image' if job.image else 'container.image'}: {problem} (fix: {IMAGE_FIX})")
    if not PurePosixPath(workdir).is_absolute():
        raise ContainerError(f"container working directory {workdir!r} must be an absolute path")
    podman = podman or PodmanOptions.from_env()
    name = name or container_name(job)
    prefix = runtime_prefix(runtime, podman)
    argv = [*prefix, "run", "--rm", "--init", "--name", name]
    if runtime == "docker":
        argv += ["--ipc=host"]
    else:
        argv += [f"--network={podman.network}"]
        for ulimit in podman.ulimits:
            argv += ["--ulimit", ulimit]
        argv += ["--ipc=host"] if slot.gpu_ids else []
    argv += _gpu_flags(runtime, slot.gpu_ids)
    mounts: list[str] = []
    if data_path:
        mounts.append(f"{data_path}:{data_path}")
    mounts.append(f"{workdir}:{workdir}")
    if job.warm is not None:  # the machine's caches and staged data, at the same path (orchestrator/warm)
        from ..warm.launch import warm_root

        mounts.append(f"{warm_root(workdir)}:{warm_root(workdir)}")
    mounts += list(container.mounts)
    for mount in mounts:
        argv += ["-v", mount]
    argv += ["-w", workdir]
    env = {**container.env, **(extra_env or {})}
    for key, value in env.items():
        check_env_name(key, "container env")
        argv += ["-e", f"{key}={value}"]
    secret_names = [check_env_name(n, "secret_env") for n in job.secret_env]
    for secret in secret_names:
        argv += ["-e", secret]  # by name: the value comes from the runtime process's environment
    argv += list(container.extra_args)
    argv += [image, *job.argv]
    cleanup = [*prefix, "rm", "-f", "-t", "0", name] if runtime == "podman" else [*prefix, "rm", "-f", name]
    return ContainerCommand(argv=argv, image=image, name=name, cleanup=cleanup,
                            inspect=image_id_argv(runtime, image, podman), secret_names=secret_names)


def job_env(machine: Machine, job: JobSpec, slot: Slot) -> dict[str, str]:
    """The non-secret variables a job gets (machine env, job env, GPU pinning): the same for every launcher."""
    env = {**machine.env, **job.env, "PYTHONUNBUFFERED": "1"}
    if slot.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slot.gpu_ids))
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", str(max(1, len(slot.cpu_ids))))
    for key in env:
        check_env_name(key, "env")
    return env


def containerized_env(machine: Machine, env: dict[str, str], slot: Slot) -> dict[str, str]:
    """Inside a container the runtime exposes only the slot's GPUs, renumbered 0..n-1."""
    if machine.container.runtime != "none" and slot.gpu_ids:
        env = {**env, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(slot.gpu_ids)))}
    return env


# ---- the local launcher's hook ------------------------------------------------------------------------------
@dataclass
class LocalLaunch:
    argv: list[str]  # run this (Popen); store it as handle.command
    image_id: str | None = None  # handle.container_image_id
    cleanup: list[str] | None = None  # run after the KILL of a cancel: removes a container whose client died


def local_container(machine: Machine, job: JobSpec, slot: Slot, workdir, *,
                    podman: PodmanOptions | None = None, timeout_s: float = 60.0) -> LocalLaunch:
    """For LocalLauncher: what to run for `job` on this machine. With runtime `none`: job.argv unchanged.

    The Popen environment must still carry `job.secret_env` (LocalLauncher already merges it): the container
    receives each secret by name. Raises ContainerError (an OrchError) when the image is missing."""
    if machine.container.runtime == "none":
        return LocalLaunch(list(job.argv))
    env = containerized_env(machine, job_env(machine, job, slot), slot)
    command = container_command(machine.container, job, slot, str(workdir), data_path=machine.data_path,
                                extra_env=env, podman=podman)
    return LocalLaunch(command.argv, read_image_id_local(command, timeout_s=timeout_s), command.cleanup)


def read_image_id_local(command: ContainerCommand, timeout_s: float = 60.0) -> str | None:
    if not command.inspect:
        return None
    try:
        result = subprocess.run(command.inspect, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ContainerError(f"cannot inspect image {command.image!r}: {exc}") from None
    if result.returncode != 0:
        raise ContainerError(f"image {command.image!r} not found by {command.inspect[0]}: "
                             f"{(result.stderr or result.stdout).strip()[-300:]} (fix: pull, load or build the image "
                             "on this machine)")
    return parse_image_id(result.stdout)
