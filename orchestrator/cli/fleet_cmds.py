"""`orch fleet ...`: the machines of the fleet."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from . import fleet_view
from .common import DbOption, FleetOption, JsonOption, load_inventory, open_db

fleet_app = typer.Typer(no_args_is_help=True, help="The machines of the fleet.")


@fleet_app.command("status")
def fleet_status(db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption, as_json: bool = JsonOption,
                 watch: bool = typer.Option(False, "--watch", help="refresh in place until Ctrl-C"),
                 interval: float = typer.Option(2.0, "--interval", min=0.1, help="--watch: seconds between refreshes"),
                 count: Optional[int] = typer.Option(None, "--count", min=1, help="--watch: stop after N refreshes"),
                 probe_timeout: float = typer.Option(fleet_view.PROBE_TIMEOUT_S, "--probe-timeout", min=0.5,
                                                     help="seconds a machine has to answer its probe")) -> None:
    """Machines (probed now), their GPUs, the trials running on them, heartbeats and states."""
    database, inventory = open_db(db), load_inventory(fleet)
    if watch:
        fleet_view.watch(database, inventory, interval_s=interval, count=count, as_json=as_json,
                         probe_timeout_s=probe_timeout)
        return
    prober = fleet_view.FleetProber(inventory, probe_timeout)
    try:
        view = fleet_view.fleet_status(database, inventory, prober)
    finally:
        prober.close()
    typer.echo(json.dumps(view, indent=2, default=str) if as_json else fleet_view.render_fleet_status(view))


@fleet_app.command("queue")
def fleet_queue(db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption, as_json: bool = JsonOption) -> None:
    """Which study and trial holds each slot and since when, the studies waiting with their priority and share, the
    next one to be served, and the resource manager's queue (Slurm) on the fleet's machines."""
    from . import queue_view

    view = queue_view.queue_view(open_db(db), load_inventory(fleet))
    typer.echo(json.dumps(view, indent=2, default=str) if as_json else queue_view.render_queue(view))


@fleet_app.command("drain")
def fleet_drain(name: str, db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption,
                reason: Optional[str] = typer.Option(None, "--reason", help="why (shown by `orch fleet status`)"),
                as_json: bool = JsonOption) -> None:
    """Let machine NAME finish its running trials and give it no new ones (every controller, no restart)."""
    from ..fleet.drain import set_drain

    result = set_drain(open_db(db), load_inventory(fleet), name, True, reason)
    typer.echo(json.dumps(asdict(result), indent=2) if as_json else result.message())


@fleet_app.command("undrain")
def fleet_undrain(name: str, db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption) -> None:
    """Put a drained machine NAME back in service."""
    from ..fleet.drain import set_drain

    typer.echo(set_drain(open_db(db), load_inventory(fleet), name, False).message())


@fleet_app.command("trust")
def fleet_trust(name: str, fleet: Optional[Path] = FleetOption,
                replace: bool = typer.Option(False, "--replace", help="replace a different key already recorded"),
                expect: Optional[str] = typer.Option(None, "--expect", help="record only if the key has this SHA256:... fingerprint")) -> None:
    """Record ssh machine NAME's host key in its known_hosts file (prints the fingerprint)."""
    from ..config.errors import ConfigError
    from ..config.fleet import Capability
    from ..launchers.ssh import trust_host

    inventory = load_inventory(fleet)
    try:
        machine = inventory.machine(name)
    except KeyError:
        raise ConfigError(f"no machine named {name!r}", file=inventory.source, field="machines",
                          fix=f"use one of {', '.join(m.name for m in inventory.machines)}") from None
    if not machine.has(Capability.HOST_KEYS) or not getattr(machine, "known_hosts", None):
        raise ConfigError(f"machine {name!r} is not an ssh machine with a known_hosts file", file=inventory.source,
                          field="known_hosts", fix="set `launcher: ssh` and `known_hosts: PATH` on the machine")
    result = trust_host(machine, replace=replace, expect=expect)
    typer.echo(f"{result.machine}: {result.entry} {result.key_type} {result.fingerprint} ({result.status} in {result.known_hosts})")


@fleet_app.command("up")
def fleet_up(fleet: Optional[Path] = FleetOption,
             timeout: float = typer.Option(90.0, "--timeout", min=1, help="seconds to wait for every node to join")) -> None:
    """Start the cluster nodes of the fleet's machines (Ray: head first); nodes already up are left alone."""
    inventory = load_inventory(fleet)
    for launcher in _cluster_launchers(inventory):
        launcher.cluster_up(inventory, timeout, typer.echo)


@fleet_app.command("down")
def fleet_down(fleet: Optional[Path] = FleetOption) -> None:
    """Stop the cluster nodes `orch fleet up` started (Ray: SIGTERM to each recorded PID; never `ray stop`)."""
    inventory = load_inventory(fleet)
    for launcher in _cluster_launchers(inventory):
        launcher.cluster_down(inventory, typer.echo)


def _cluster_launchers(inventory) -> list:
    """The launchers of the fleet's machines that start and stop cluster nodes (Capability.CLUSTER_UP_DOWN)."""
    from ..config.errors import ConfigError
    from ..config.fleet import Capability
    from ..launchers.registry import LAUNCHERS, capabilities, launcher_class

    names = sorted({m.launcher for m in inventory.machines if m.has(Capability.CLUSTER_UP_DOWN)})
    if not names:
        able = [n for n in LAUNCHERS if Capability.CLUSTER_UP_DOWN in capabilities(n)]
        raise ConfigError(f"the fleet has no `launcher: {' or '.join(able)}` machine, so there is no cluster node to "
                          "start or stop", file=inventory.source, field="machines",
                          fix=f"set `launcher: {able[0]}` on the machines that form the cluster (docs/fleet.md)")
    return [launcher_class(name) for name in names]
