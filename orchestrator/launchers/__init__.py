"""Launchers: how a job reaches a machine. One module per backend behind `base.Launcher`."""

from __future__ import annotations

from ..config.errors import ConfigError
from .base import Launcher

_BACKENDS = {"local": ("orchestrator.launchers.local", "LocalLauncher"),
             "ssh": ("orchestrator.launchers.ssh", "SshLauncher"),
             "ray": ("orchestrator.launchers.ray", "RayLauncher")}


def get_launcher(name: str) -> Launcher:
    if name not in _BACKENDS:
        raise ConfigError(f"launcher {name!r} is not available in this version", field="launcher",
                          fix=f"use one of {', '.join(sorted(_BACKENDS))}")
    import importlib

    module, cls = _BACKENDS[name]
    return getattr(importlib.import_module(module), cls)()
