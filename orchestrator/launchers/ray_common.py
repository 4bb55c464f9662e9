"""What the Ray launcher and `orch fleet up/down` (ray_cluster.py) share: the `ray:` settings of a machine
(`RaySpec`), the cluster connection of this process (one per process), the node that offers a machine, and `ray`
itself, imported on first use (importing Ray takes about 0.6 s; a fleet file needs only the models)."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
from typing import Literal

from pydantic import Field, field_validator

from ..config.errors import OrchError
from ..config.fleet import EnvMap, Machine, _Strict
from ..config.validation import FIX_MARK
from . import ray_runner


class _LazyRay:
    """Stands for the `ray` module until its first use, then puts the real one in its place (importing Ray takes
    about 0.6 s; a fleet file, `orch fleet status` of other launchers and the CLI need only the models below)."""

    def __getattr__(self, name: str):
        import ray as module

        globals()["ray"] = module
        return getattr(module, name)


ray = _LazyRay()


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
    env: EnvMap = Field(default_factory=dict)  # environment of `ray start` on the node
    dead_after_s: float = Field(default=15.0, gt=0, le=86400)  # a trial whose node does not answer this long is lost

    @field_validator("address")
    @classmethod
    def _address_form(cls, value: str | None) -> str | None:
        if value is not None and (not re.match(ADDRESS_PATTERN, value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536):
            raise ValueError(f"address {value!r} is not HOST:PORT{FIX_MARK}write the head node's IP and GCS port, "
                             "e.g. 10.0.0.11:6379")
        return value


class RayError(OrchError):
    """Cannot reach or use the Ray cluster."""


class RayResourceError(RayError):
    """A request no live node can ever satisfy."""


def machine_resource(machine: Machine | str) -> str:
    return f"machine:{machine if isinstance(machine, str) else machine.name}"


def _where(machine: Machine) -> str:
    return f"ray machine {machine.name!r} (node {machine.host}, cluster {machine.ray.address})"


# ---- the cluster connection (one per process) -------------------------------------------------------------------
_lock = threading.Lock()
_address: str | None = None


def auth_env(spec: RaySpec) -> dict[str, str]:
    """The variables that give a node or a driver the cluster's authentication (a path, never the token)."""
    if spec.auth == "disabled":
        return {"RAY_AUTH_MODE": "disabled"}
    env = {"RAY_AUTH_MODE": "token"}
    if spec.token_file:
        env["RAY_AUTH_TOKEN_PATH"] = os.path.expanduser(spec.token_file)
    return env


def connect(spec: RaySpec) -> None:
    """Join the cluster at `spec.address` as a driver, once per process."""
    global _address
    with _lock:
        if ray.is_initialized():
            if _address == spec.address:
                return
            raise RayError(f"this controller is already connected to the Ray cluster at {_address}, not "
                           f"{spec.address} (fix: one fleet is one cluster: give every ray machine the same address)")
        host, port = spec.address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise RayError(f"cannot reach the Ray head at {spec.address}: {exc} (fix: `orch fleet up` starts the "
                           "fleet's Ray nodes; check `ray.address` in the fleet file)") from None
        os.environ.update(auth_env(spec))
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        main = threading.current_thread() is threading.main_thread()
        saved = signal.getsignal(signal.SIGTERM) if main else None
        try:
            ray.init(address=spec.address, namespace="orch", logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - ray.init raises ConnectionError, RuntimeError, AuthenticationError...
            raise RayError(f"cannot join the Ray cluster at {spec.address}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''} (fix: check `ray.auth`/`ray.token_file` "
                           "and that the head runs the same Ray version)") from None
        finally:
            if main and saved is not None:
                signal.signal(signal.SIGTERM, saved)  # ray.init installs its own; the controller's must stay
        ray.cloudpickle.register_pickle_by_value(ray_runner)  # the nodes need not have this project installed
        _address = spec.address


def node_of(machine: Machine) -> dict | None:
    """The live node that offers `machine:NAME` (its `ray.nodes()` entry), or None."""
    resource = machine_resource(machine)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(resource)]
    if len(nodes) > 1:
        ips = ", ".join(n["NodeManagerAddress"] for n in nodes)
        raise RayError(f"{_where(machine)}: several live nodes offer {resource} ({ips}) (fix: start exactly one "
                       f"node with --resources '{{\"{resource}\": 1}}')")
    return nodes[0] if nodes else None


