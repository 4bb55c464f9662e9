"""The launcher registry: one line per launcher module, and what is built from those lines.

Each module named in `LAUNCHERS` holds a `Launcher` subclass whose `machine_type` is the module's machine model
(see `base.py`). From them the registry builds the discriminated union (on `launcher:`) that every machine entry of
a fleet file is validated through, the model of a fleet's `defaults:` (every launcher's fields, all optional), and
the launchers themselves. Adding a launcher: its module, one line here, its case in tests/launchers/conftest.py
(docs/architecture.md).

Launcher modules are imported to read their models, so they import heavy libraries (ray) on first use only.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from ..config.errors import ConfigError
from ..config.fleet import Capability, Machine
from .base import Launcher

#: launcher name -> "module:class"
LAUNCHERS: dict[str, str] = {
    "local": "orchestrator.launchers.local:LocalLauncher",
    "ssh": "orchestrator.launchers.ssh:SshLauncher",
    "ray": "orchestrator.launchers.ray:RayLauncher",
    "slurm": "orchestrator.launchers.slurm:SlurmLauncher",
}


def launcher_class(name: str) -> type[Launcher]:
    if name not in LAUNCHERS:
        raise ConfigError(f"launcher {name!r} is not available in this version", field="launcher",
                          fix=f"use one of {', '.join(sorted(LAUNCHERS))}")
    return _load(name)


@lru_cache(maxsize=None)
def _load(name: str) -> type[Launcher]:
    module, cls = LAUNCHERS[name].split(":")
    launcher = getattr(importlib.import_module(module), cls)
    kind = launcher.machine_type
    tag = kind.model_fields["launcher"]
    if not issubclass(kind, Machine) or tag.annotation != Literal[name] or launcher.name != name:
        raise TypeError(f"{LAUNCHERS[name]}: its machine_type must be a Machine subclass with "
                        f"`launcher: Literal[{name!r}] = {name!r}` and its name {name!r}")
    return launcher


def get_launcher(name: str) -> Launcher:
    return launcher_class(name)()


def capabilities(name: str) -> frozenset[Capability]:
    return launcher_class(name).machine_type.capabilities


@lru_cache(maxsize=None)
def machine_kinds() -> dict[str, type[Machine]]:
    """Launcher name -> its machine model."""
    return {name: _load(name).machine_type for name in LAUNCHERS}


@lru_cache(maxsize=None)
def machine_union() -> TypeAdapter:
    """The discriminated union of every launcher's machine model, on `launcher`."""
    kinds = tuple(machine_kinds().values())
    return TypeAdapter(Annotated[Union[kinds], Field(discriminator="launcher")])  # type: ignore[valid-type]


@lru_cache(maxsize=None)
def field_owners() -> dict[str, set[str]]:
    """Field name -> the launchers whose machines have it."""
    owners: dict[str, set[str]] = {}
    for name, kind in machine_kinds().items():
        for field in kind.model_fields:
            owners.setdefault(field, set()).add(name)
    return owners


@lru_cache(maxsize=None)
def defaults_model() -> type[BaseModel]:
    """The model of a fleet's `defaults:`: every launcher's machine fields but `name`, all optional. A field two
    launchers share must have one type in both (checked here)."""
    fields: dict[str, Any] = {}
    annotations: dict[str, Any] = {}
    for name, kind in machine_kinds().items():
        for field, info in kind.model_fields.items():
            if field in ("name", "launcher"):
                continue
            if field in annotations and annotations[field] != info.annotation:
                raise TypeError(f"launcher {name!r} declares machine field {field!r} with another type than "
                                f"{sorted(field_owners()[field] - {name})}: give it another name")
            annotations[field] = info.annotation
            fields[field] = (Optional[_with_metadata(info)], None)
    tags = tuple(machine_kinds())
    fields["launcher"] = (Optional[Literal[tags]], None)  # type: ignore[valid-type]
    return create_model("MachineDefaults", __config__=ConfigDict(extra="forbid"), **fields)


def _with_metadata(info) -> Any:
    """A field's type with its constraints and validators (Field(ge=...), Annotated checks) kept."""
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


__all__ = ["LAUNCHERS", "launcher_class", "get_launcher", "capabilities", "machine_kinds", "machine_union",
           "defaults_model", "field_owners"]
