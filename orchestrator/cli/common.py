"""What every `orch` command shares: the database and fleet options and how they resolve."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import typer

from db import Database, safe_url

from ..config.errors import OrchError
from ..config.fleet import Fleet
from ..config.fleet_file import load_fleet

DEFAULT_FLEET_FILE = "fleet.yaml"


class State:
    db_url: str | None = None


def open_db(url: str | None = None) -> Database:
    return Database(url or State.db_url)


def load_inventory(path: Optional[Path]) -> Fleet:
    if path is not None:
        return load_fleet(path)
    env = os.environ.get("ORCH_FLEET")
    if env:
        return load_fleet(env)
    return load_fleet(DEFAULT_FLEET_FILE if Path(DEFAULT_FLEET_FILE).is_file() else None)


FleetOption = typer.Option(None, "--fleet", help="fleet file (default: ./fleet.yaml, else this machine only)")
JsonOption = typer.Option(False, "--json", help="print JSON")
DbOption = typer.Option(None, "--db", help="SQLAlchemy URL of the results database (default: $ORCH_DB, else sqlite:///./orch.db)")


def check_name(name: str, what: str = "study name") -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", name):
        raise OrchError(f"{what} {name!r} is not allowed (fix: use letters, digits, '.', '_' and '-')")
    return name


def where(db: Database) -> str:
    return safe_url(db.url)
