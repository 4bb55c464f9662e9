"""`orch fleet ...`: the machines of the fleet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from . import status as status_views
from .common import DbOption, FleetOption, JsonOption, load_inventory, open_db

fleet_app = typer.Typer(no_args_is_help=True, help="The machines of the fleet.")


@fleet_app.command("status")
def fleet_status(db: Optional[str] = DbOption, fleet: Optional[Path] = FleetOption, as_json: bool = JsonOption) -> None:
    """Machines, their GPUs and the trials running on them."""
    view = status_views.fleet_status(open_db(db), load_inventory(fleet))
    typer.echo(json.dumps(view, indent=2, default=str) if as_json else status_views.render_fleet_status(view))


@fleet_app.command("trust")
def fleet_trust(name: str, fleet: Optional[Path] = FleetOption,
                replace: bool = typer.Option(False, "--replace", help="replace a different key already recorded"),
                expect: Optional[str] = typer.Option(None, "--expect", help="record only if the key has this SHA256:... fingerprint")) -> None:
    """Record ssh machine NAME's host key in its known_hosts file (prints the fingerprint)."""
    from ..config.errors import ConfigError
    from ..launchers.ssh import trust_host

    inventory = load_inventory(fleet)
    try:
        machine = inventory.machine(name)
    except KeyError:
        raise ConfigError(f"no machine named {name!r}", file=inventory.source, field="machines",
                          fix=f"use one of {', '.join(m.name for m in inventory.machines)}") from None
    if machine.launcher != "ssh" or not machine.known_hosts:
        raise ConfigError(f"machine {name!r} is not an ssh machine with a known_hosts file", file=inventory.source,
                          field="known_hosts", fix="set `launcher: ssh` and `known_hosts: PATH` on the machine")
    result = trust_host(machine, replace=replace, expect=expect)
    typer.echo(f"{result.machine}: {result.entry} {result.key_type} {result.fingerprint} ({result.status} in {result.known_hosts})")
