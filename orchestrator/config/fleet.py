"""The fleet inventory (`fleet.yaml`): typed models, defaults inheritance, validation with line numbers.

A fleet is a list of machines. Fields under `defaults:` apply to every machine that does not set them
(`container`, `env`, `labels`, `ray` and `health_check` merge key by key). `gpus: auto` is resolved when a launcher first
talks to the machine (nvidia-smi); a machine without GPUs offers `cpu_slots` CPU slots instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .images import IMAGE_FIX, image_reference_problem
from .validation import FIX_MARK, validate_doc
from .yaml_source import YamlDoc, load_yaml_file, load_yaml_text

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
LAUNCHERS = ("local", "ssh", "ray")
RUNTIMES = ("docker", "podman", "none")
#: a host name (RFC 1123 labels), an IPv4 address, or an IPv6 address (optionally in brackets); nothing a shell,
#: ssh or a known_hosts line would read as more than one word or as an option
HOST_PATTERN = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}"
                          r"[A-Za-z0-9_])?)*\.?$|^\[?[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?\]?$")
USER_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


ADDRESS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.-]*:[0-9]{1,5}$"


class RaySpec(_Strict):
    """How a `launcher: ray` machine's node joins the cluster (usually set once under `defaults:`)."""

    address: str | None = None  # the head's GCS address HOST:PORT
    auth: Literal["token", "disabled"] = "token"
    token_file: str | None = None  # RAY_AUTH_TOKEN_PATH on every node and the controller (default ~/.ray/auth_token)
    start: Literal["auto", "local", "ssh"] = "auto"  # how `orch fleet up` starts the node: auto = local on loopback
    ray_command: list[str] | None = None  # the `ray` executable on the node (default: beside this Python, or `ray`)
    temp_dir: str | None = None  # `ray start --temp-dir` (keep it short: Ray's socket paths must fit 107 bytes)
    start_args: list[str] = Field(default_factory=list)  # more `ray start` flags, e.g. --object-store-memory=...
    env: dict[str, str] = Field(default_factory=dict)  # environment of `ray start` on the node
    dead_after_s: float = Field(default=15.0, gt=0, le=86400)  # a trial whose node does not answer this long is lost

    _check_env = field_validator("env")(classmethod(lambda cls, env: _env_names(env)))

    @field_validator("address")
    @classmethod
    def _address_form(cls, value: str | None) -> str | None:
        if value is not None and (not re.match(ADDRESS_PATTERN, value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536):
            raise ValueError(f"address {value!r} is not HOST:PORT{FIX_MARK}write the head node's IP and GCS port, "
                             "e.g. 10.0.0.11:6379")
        return value


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


def _gpus(value: object) -> int | Literal["auto", "none"]:
    if value in ("auto", "none"):
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"GPU count must be a positive integer, `auto` or `none`, got {value!r}"
            f"{FIX_MARK}write the number of GPUs, `auto` to detect them, or `gpus: none` (with cpu_slots) for a CPU machine"
        )
    return value


class MachineFields(_Strict):
    """Every field a machine may set; also the shape of `defaults:` (where all are optional)."""

    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    launcher: Literal["local", "ssh", "ray"] | None = None
    gpus: int | str | None = None
    gpu_type: str | None = None
    cpu_slots: int | Literal["auto"] | None = None
    labels: dict[str, str] | None = None
    workdir: str | None = None
    data_path: str | None = None
    container: ContainerSpec | None = None
    env: dict[str, str] | None = None
    ray: RaySpec | None = None
    nvidia_smi: str | None = None  # nvidia-smi on the machine (default: `nvidia-smi` on its PATH)
    health_check: HealthCheckSpec | None = None

    _check_nvidia_smi = field_validator("nvidia_smi")(classmethod(
        lambda cls, v: _command_word(v, "nvidia_smi", "/usr/bin/nvidia-smi")))

    @field_validator("gpus", mode="before")
    @classmethod
    def _check_gpus(cls, value: object) -> object:
        return None if value is None else _gpus(value)

    _check_env = field_validator("env")(classmethod(lambda cls, env: _env_names(env)))

    @field_validator("host")
    @classmethod
    def _check_host(cls, host: str | None) -> str | None:
        if host is not None and (len(host) > 253 or not HOST_PATTERN.match(host)):
            raise ValueError(f"{host!r} is not a host name or IP address{FIX_MARK}write a name like gpu-01.lab.example "
                             "or an address like 10.0.0.11 (put the user in `user:` and the port in `port:`)")
        return host

    @field_validator("user")
    @classmethod
    def _check_user(cls, user: str | None) -> str | None:
        if user is not None and not USER_PATTERN.match(user):
            raise ValueError(f"{user!r} is not a user name{FIX_MARK}use letters, digits, '.', '_' and '-', not starting with '-'")
        return user

    @field_validator("cpu_slots", mode="before")
    @classmethod
    def _check_cpu_slots(cls, value: object) -> object:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"cpu_slots must be a positive integer or `auto`, got {value!r}{FIX_MARK}write a count like 2, or auto for one per core")
        return value


class Machine(MachineFields):
    name: str = Field(pattern=NAME_PATTERN)
    host: str = "localhost"
    port: int = Field(default=22, ge=1, le=65535)
    launcher: Literal["local", "ssh", "ray"] = "local"
    gpus: int | str = "auto"
    cpu_slots: int | Literal["auto"] = "auto"
    labels: dict[str, str] = Field(default_factory=dict)
    workdir: str = "runs"
    container: ContainerSpec = Field(default_factory=ContainerSpec)
    env: dict[str, str] = Field(default_factory=dict)
    nvidia_smi: str = "nvidia-smi"
    health_check: HealthCheckSpec = Field(default_factory=HealthCheckSpec)

    @model_validator(mode="after")
    def _ssh_needs_user(self) -> "Machine":
        if self.launcher == "ssh" and not self.known_hosts:
            raise ValueError(f"an ssh machine needs known_hosts: host keys are always verified{FIX_MARK}add `known_hosts: PATH` (`orch fleet trust NAME` records a key)")
        return self

    @model_validator(mode="after")
    def _ray_needs_address(self) -> "Machine":
        if self.launcher == "ray" and (self.ray is None or not self.ray.address):
            raise ValueError(f"a ray machine needs the cluster's address{FIX_MARK}add `ray: {{address: HEAD_HOST:PORT}}` "
                             "(under `defaults:` for every machine)")
        return self

    def resolved_cpu_slots(self, cpu_count: int | None = None) -> int:
        """`cpu_slots`; `auto` is one per core of the machine (`cpu_count` as its probe reported it, else this
        machine's own count: right for the local launcher only)."""
        if self.cpu_slots != "auto":
            return int(self.cpu_slots)
        return cpu_count or os.cpu_count() or 1


class Fleet(BaseModel):
    machines: list[Machine]
    source: str = "<embedded>"

    def machine(self, name: str) -> Machine:
        for machine in self.machines:
            if machine.name == name:
                return machine
        raise KeyError(name)


_MERGED_DICTS = ("env", "labels")


def _merge(defaults: dict, machine: dict) -> dict:
    merged = {**defaults, **machine}
    for key in _MERGED_DICTS:
        if isinstance(defaults.get(key), dict) and isinstance(machine.get(key), dict):
            merged[key] = {**defaults[key], **machine[key]}
    for key in ("ray", "health_check"):
        if isinstance(defaults.get(key), dict) and isinstance(machine.get(key), dict):
            merged[key] = {**defaults[key], **machine[key]}
    if isinstance(defaults.get("container"), dict) and isinstance(machine.get("container"), dict):
        container = {**defaults["container"], **machine["container"]}
        if isinstance(defaults["container"].get("env"), dict) and isinstance(machine["container"].get("env"), dict):
            container["env"] = {**defaults["container"]["env"], **machine["container"]["env"]}
        merged["container"] = container
    return merged


def parse_fleet(doc: YamlDoc) -> Fleet:
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), "a fleet file is a mapping with `machines:` (and optional `defaults:`)",
                        fix="start the file with `machines:` followed by a list of machines")
    unknown = sorted(set(data) - {"machines", "defaults"})
    if unknown:
        raise doc.error((unknown[0],), "unknown field", fix="a fleet file has only `defaults:` and `machines:`")
    defaults_raw = data.get("defaults") or {}
    if not isinstance(defaults_raw, dict):
        raise doc.error(("defaults",), "must be a mapping of machine fields", fix="write `defaults:` then indented `key: value` lines")
    if "name" in defaults_raw:
        raise doc.error(("defaults", "name"), "a default name makes no sense", fix="give each machine its own name")
    validate_doc(MachineFields, doc, defaults_raw, prefix=("defaults",))
    machines_raw = data.get("machines")
    if not isinstance(machines_raw, list) or not machines_raw:
        raise doc.error(("machines",), "must be a non-empty list of machines",
                        fix="add `machines:` with at least one `- name: ...` entry")
    machines: list[Machine] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(machines_raw):
        if not isinstance(raw, dict):
            raise doc.error(("machines", index), "each machine must be a mapping", fix="write `- name: NAME` and its fields")
        if "name" not in raw:
            raise doc.error(("machines", index), "machine has no name", fix="add `name: NAME` (unique in the fleet)")
        machine = validate_doc(Machine, doc, _merge(defaults_raw, raw), prefix=("machines", index))
        if machine.name in seen:
            raise doc.error(("machines", index, "name"), f"duplicate machine name {machine.name!r} (also machines[{seen[machine.name]}])",
                            fix="give every machine a unique name")
        seen[machine.name] = index
        _check_files(doc, machine, index, raw)
        machines.append(machine)
    _check_one_ray_cluster(doc, machines, machines_raw)
    return Fleet(machines=machines, source=doc.file)


def _check_files(doc: YamlDoc, machine: Machine, index: int, raw: dict) -> None:
    """Files the controller itself reads for a machine: a missing one is the machine's configuration error,
    named here before anything is written, not a `no reachable machine` after probing it."""
    if machine.identity_file and machine.launcher in ("ssh", "ray"):
        path = Path(os.path.expanduser(machine.identity_file))
        if not path.is_file():
            where = ("machines", index, "identity_file") if "identity_file" in raw else ("defaults", "identity_file")
            raise doc.error(where, f"machine {machine.name!r}: identity file {machine.identity_file} "
                            + ("is not a file" if path.exists() else "does not exist"),
                            fix="point identity_file at the private key whose public key is in the machine's "
                            "authorized_keys (a path on this machine; ~ is expanded)")


def _check_one_ray_cluster(doc: YamlDoc, machines: list[Machine], machines_raw: list) -> None:
    """The controller joins one Ray cluster: every ray machine names the same address, and no two share a node IP."""
    ray_machines = [(i, m) for i, m in enumerate(machines) if m.launcher == "ray"]
    if not ray_machines:
        return
    first = ray_machines[0][1]
    hosts: dict[str, str] = {}
    for index, machine in ray_machines:
        path = ("machines", index, "ray", "address") if "ray" in machines_raw[index] else ("defaults", "ray", "address")
        if machine.ray.address != first.ray.address:
            raise doc.error(path, f"ray machine {machine.name!r} names cluster {machine.ray.address} but "
                            f"{first.name!r} names {first.ray.address}",
                            fix="one fleet is one Ray cluster: set `ray: {address: ...}` once under `defaults:`")
        if machine.host in hosts:
            raise doc.error(("machines", index, "host"), f"ray machines {hosts[machine.host]!r} and {machine.name!r} "
                            f"are both node {machine.host}", fix="give each ray machine its own node IP as `host`")
        hosts[machine.host] = machine.name


def load_fleet(path: str | Path | None) -> Fleet:
    """Load `path`; None means the embedded default (this machine only, local launcher)."""
    if path is None:
        return parse_fleet(load_yaml_text(EMBEDDED_FLEET, "<embedded fleet>"))
    return parse_fleet(load_yaml_file(path))


EMBEDDED_FLEET = """\
machines:
  - name: local
    launcher: local
    gpus: auto
    cpu_slots: auto
"""
