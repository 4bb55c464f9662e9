"""The fleet inventory (`fleet.yaml`): the machine fields every launcher shares, defaults inheritance, validation
with line numbers.

A fleet is a list of machines. Each machine names its `launcher`; the launcher's module owns the machine's model
(a subclass of `Machine` with the launcher's own fields and `capabilities`, e.g. `launchers/ssh.py`'s `SshMachine`),
and `orchestrator.launchers.registry` builds the discriminated union of those models that every machine entry is
validated through: a new launcher adds no field, `Literal` or branch here. Fields under `defaults:` apply to every
machine whose launcher has them (`container`, `env`, `labels` and the launchers' nested settings such as `ray:`
merge key by key). `gpus: auto` is resolved when a launcher first talks to the machine (nvidia-smi); a machine
without GPUs offers `cpu_slots` CPU slots instead.

This module holds the models the launchers build on; reading a fleet file through the launchers' union is
`config/fleet_file.py` (the launchers import this module, so this module imports no launcher).
"""

from __future__ import annotations

import importlib
import os
import re
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .images import IMAGE_FIX, image_reference_problem
from .validation import FIX_MARK
from .yaml_source import YamlDoc

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
RUNTIMES = ("docker", "podman", "none")
#: a host name (RFC 1123 labels), an IPv4 address, or an IPv6 address (optionally in brackets); nothing a shell,
#: ssh or a known_hosts line would read as more than one word or as an option
HOST_PATTERN = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}"
                          r"[A-Za-z0-9_])?)*\.?$|^\[?[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?\]?$")
USER_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Capability(str, Enum):
    """What a launcher can do, declared by its machine model (`Machine.capabilities`); the parts that differ by
    backend ask for a capability, never for a launcher's name."""

    #: a job keeps running when the controller dies; `Launcher.reattach` finds it again (no second copy is started)
    OUTLIVES_CONTROLLER = "outlives_controller"
    #: the machine is reached over SSH with verified host keys (`orch fleet trust NAME` records one)
    HOST_KEYS = "host_keys"
    #: `orch fleet up` / `orch fleet down` start and stop the machines' cluster nodes (`Launcher.cluster_up/down`)
    CLUSTER_UP_DOWN = "cluster_up_down"
    #: CPU slots are pinned to cores of the controller's own host (the scheduler spreads its cores over them)
    CPU_AFFINITY = "cpu_affinity"
    #: short commands run on the machine itself (`Launcher.run_command`: nvidia-smi's process list, health checks)
    RUN_COMMAND = "run_command"
    #: a resource manager reports the machine drained or down (`MachineInfo.node_state`, shown by `orch fleet status`)
    NODE_STATE = "node_state"
    #: a resource manager queues the jobs and gives each its resources: orch claims no slots there (orchestrator/claims),
    #: it submits and lets the manager arbitrate between studies
    QUEUES_JOBS = "queues_jobs"


def _env_names(env: dict[str, str] | None) -> dict[str, str] | None:
    for key in env or {}:
        if not ENV_NAME.match(key):
            raise ValueError(f"{key!r} is not an environment variable name{FIX_MARK}use letters, digits and _, "
                             "not starting with a digit (no `=`, spaces or dashes)")
    return env


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContainerSpec(_Strict):
    runtime: Literal["docker", "podman", "none"] = "none"
    image: str | None = None
    mounts: list[str] = Field(default_factory=list)  # "HOST:CONTAINER[:ro]"
    env: dict[str, str] = Field(default_factory=dict)
    extra_args: list[str] = Field(default_factory=list)

    _check_env = field_validator("env")(classmethod(lambda cls, env: _env_names(env)))

    @model_validator(mode="after")
    def _image_needed(self) -> "ContainerSpec":
        if self.runtime != "none" and not self.image:
            raise ValueError(f"runtime {self.runtime!r} needs an image{FIX_MARK}add `image: NAME:TAG` under container, or use runtime none")
        if self.image is not None:
            problem = image_reference_problem(self.image)
            if problem:
                raise ValueError(f"{problem}{FIX_MARK}{IMAGE_FIX}")
        return self

    @field_validator("mounts")
    @classmethod
    def _mount_form(cls, mounts: list[str]) -> list[str]:
        for mount in mounts:
            parts = mount.split(":")
            if len(parts) not in (2, 3) or not parts[0] or not parts[1] or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise ValueError(f"mount {mount!r} is malformed{FIX_MARK}write HOST:CONTAINER or HOST:CONTAINER:ro")
        return mounts


#: a command on the machine, named as an executable or a path: one argv word, nothing a shell reads as more
COMMAND_PATTERN = re.compile(r"^[A-Za-z0-9_./~+][A-Za-z0-9_./~+-]{0,1023}$")


def _command_word(value: str | None, what: str, example: str, python_template: bool = False) -> str | None:
    if value is not None and not (python_template and value == "{python}") and not COMMAND_PATTERN.match(value):
        raise ValueError(f"{value!r} is not an executable name or path{FIX_MARK}write {what} as one word, e.g. "
                         f"{example} (no spaces, quotes or shell characters; not starting with '-')")
    return value


class HealthCheckSpec(_Strict):
    """The pre-flight health check of a machine (orchestrator/liveness/health_check.py), run before its first trial
    and after a trial fails there. The GPUs nvidia-smi lists must match `gpus:` (a number) and `gpu_type:` (a part of
    the model name) of the machine; then a program run on the machine through its launcher (in its container, if it
    has one) checks with torch that every GPU is visible, multiplies matrices on each, and, for studies of
    multi-GPU trials, times an NCCL all-reduce over the GPUs that must finish within `allreduce_timeout_s`."""

    run: Literal["auto", "always", "never"] = "auto"  # the torch program: auto = on machines whose nvidia-smi lists GPUs
    python: str = "{python}"  # the interpreter with torch on the machine ({python}: the controller's, as in trials)
    timeout_s: float = Field(default=300, gt=0, le=86400)  # the whole program, torch import and CUDA start included
    allreduce_timeout_s: float = Field(default=60, gt=0, le=3600)  # process start, NCCL init and the all-reduce
    matmul_size: int = Field(default=4096, ge=64, le=32768)

    _check_python = field_validator("python")(classmethod(
        lambda cls, v: _command_word(v, "health_check.python", "python3 or /opt/venv/bin/python", python_template=True)))

    @model_validator(mode="after")
    def _allreduce_within_the_whole(self) -> "HealthCheckSpec":
        if self.allreduce_timeout_s >= self.timeout_s:
            raise ValueError(f"allreduce_timeout_s ({self.allreduce_timeout_s:g}) is not below timeout_s "
                             f"({self.timeout_s:g}), the bound of the whole check{FIX_MARK}lower allreduce_timeout_s "
                             "or raise timeout_s")
        return self


# ---- field types with their checks (Annotated, so `defaults:` validates a field as the machines do) -------------
def _gpus(value: object) -> int | Literal["auto", "none"]:
    if value in ("auto", "none"):
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"GPU count must be a positive integer, `auto` or `none`, got {value!r}"
            f"{FIX_MARK}write the number of GPUs, `auto` to detect them, or `gpus: none` (with cpu_slots) for a CPU machine"
        )
    return value


def _cpu_slots(value: object) -> object:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"cpu_slots must be a positive integer or `auto`, got {value!r}{FIX_MARK}write a count like 2, "
                         "or auto for one per core")
    return value


def _host(host: str) -> str:
    if len(host) > 253 or not HOST_PATTERN.match(host):
        raise ValueError(f"{host!r} is not a host name or IP address{FIX_MARK}write a name like gpu-01.lab.example "
                         "or an address like 10.0.0.11 (put the user in `user:` and the port in `port:`)")
    return host


def _user(user: str) -> str:
    if not USER_PATTERN.match(user):
        raise ValueError(f"{user!r} is not a user name{FIX_MARK}use letters, digits, '.', '_' and '-', not starting with '-'")
    return user


Gpus = Annotated[int | str, BeforeValidator(_gpus)]
CpuSlots = Annotated[int | Literal["auto"], BeforeValidator(_cpu_slots)]
Host = Annotated[str, AfterValidator(_host)]
User = Annotated[str, AfterValidator(_user)]
EnvMap = Annotated[dict[str, str], AfterValidator(_env_names)]
NvidiaSmi = Annotated[str, AfterValidator(lambda v: _command_word(v, "nvidia_smi", "/usr/bin/nvidia-smi"))]


class Machine(_Strict):
    """The fields every machine has, whatever its launcher. Each launcher subclasses it in its own module with
    `launcher: Literal["NAME"]`, its own fields and its `capabilities`; `Machine(**fields)` builds the subclass of
    the launcher `fields` name (default `local`)."""

    #: what the machine's launcher can do (see `Capability`); each launcher's model sets its own
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    name: str = Field(pattern=NAME_PATTERN)
    launcher: str = "local"
    host: Host = "localhost"
    gpus: Gpus = "auto"
    gpu_type: str | None = None
    cpu_slots: CpuSlots = "auto"
    labels: dict[str, str] = Field(default_factory=dict)
    workdir: str = "runs"
    data_path: str | None = None
    container: ContainerSpec = Field(default_factory=ContainerSpec)
    env: EnvMap = Field(default_factory=dict)
    nvidia_smi: NvidiaSmi = "nvidia-smi"  # nvidia-smi on the machine (default: `nvidia-smi` on its PATH)
    health_check: HealthCheckSpec = Field(default_factory=HealthCheckSpec)

    def __new__(cls, *args: Any, **data: Any) -> "Machine":
        if cls is Machine:  # `Machine(launcher="ssh", ...)`: the ssh launcher's model (pydantic then validates it)
            kind = machine_kinds().get(data.get("launcher", "local"))
            if kind is not None:
                return super().__new__(kind)
        return super().__new__(cls)

    @field_validator("launcher")
    @classmethod
    def _known_launcher(cls, value: str) -> str:
        names = machine_kinds()
        if value not in names:
            raise ValueError(f"unknown launcher, got {value!r}{FIX_MARK}use one of {', '.join(sorted(names))}")
        return value

    def has(self, capability: Capability) -> bool:
        return capability in self.capabilities

    @property
    def claim_key(self) -> str:
        """What the fleet's slot claims (orchestrator/claims) call this machine in the shared database: its name,
        which every fleet file of that database must give the same machine."""
        return self.name

    def resolved_cpu_slots(self, cpu_count: int | None = None) -> int:
        """`cpu_slots`; `auto` is one per core of the machine (`cpu_count` as its probe reported it, else this
        machine's own count: right for the local launcher only)."""
        if self.cpu_slots != "auto":
            return int(self.cpu_slots)
        return cpu_count or os.cpu_count() or 1

    @classmethod
    def check_fleet(cls, doc: YamlDoc, entries: list[tuple[int, "Machine", dict]], defaults: dict) -> None:
        """Checks across this launcher's machines of one fleet file, or of files the controller reads for them
        (entries: index in `machines:`, the machine, its raw mapping). Raise `doc.error(...)`."""


class Fleet(BaseModel):
    machines: list[Machine]
    source: str = "<embedded>"

    def machine(self, name: str) -> Machine:
        for machine in self.machines:
            if machine.name == name:
                return machine
        raise KeyError(name)


def machine_kinds() -> dict[str, type[Machine]]:
    """Launcher name -> its machine model. The launcher registry is found by name, the way plug-ins are: the
    launchers build on this module, so it imports none of them."""
    return importlib.import_module("orchestrator.launchers.registry").machine_kinds()
