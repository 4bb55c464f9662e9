"""The fleet inventory (`fleet.yaml`): typed models, defaults inheritance, validation with line numbers.

A fleet is a list of machines. Fields under `defaults:` apply to every machine that does not set them
(`container`, `env` and `labels` merge key by key). `gpus: auto` is resolved when a launcher first
talks to the machine (nvidia-smi); a machine without GPUs offers `cpu_slots` CPU slots instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .validation import FIX_MARK, validate_doc
from .yaml_source import YamlDoc, load_yaml_file, load_yaml_text

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
LAUNCHERS = ("local", "ssh", "ray")
RUNTIMES = ("docker", "podman", "none")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContainerSpec(_Strict):
    runtime: Literal["docker", "podman", "none"] = "none"
    image: str | None = None
    mounts: list[str] = Field(default_factory=list)  # "HOST:CONTAINER[:ro]"
    env: dict[str, str] = Field(default_factory=dict)
    extra_args: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _image_needed(self) -> "ContainerSpec":
        if self.runtime != "none" and not self.image:
            raise ValueError(f"runtime {self.runtime!r} needs an image{FIX_MARK}add `image: NAME:TAG` under container, or use runtime none")
        return self

    @field_validator("mounts")
    @classmethod
    def _mount_form(cls, mounts: list[str]) -> list[str]:
        for mount in mounts:
            parts = mount.split(":")
            if len(parts) not in (2, 3) or not parts[0] or not parts[1] or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise ValueError(f"mount {mount!r} is malformed{FIX_MARK}write HOST:CONTAINER or HOST:CONTAINER:ro")
        return mounts


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

    @field_validator("gpus", mode="before")
    @classmethod
    def _check_gpus(cls, value: object) -> object:
        return None if value is None else _gpus(value)

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

    @model_validator(mode="after")
    def _ssh_needs_user(self) -> "Machine":
        if self.launcher == "ssh" and not self.known_hosts:
            raise ValueError(f"an ssh machine needs known_hosts: host keys are always verified{FIX_MARK}add `known_hosts: PATH` (`orch fleet trust NAME` records a key)")
        return self

    def resolved_cpu_slots(self) -> int:
        return os.cpu_count() or 1 if self.cpu_slots == "auto" else int(self.cpu_slots)


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
        machines.append(machine)
    return Fleet(machines=machines, source=doc.file)


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
