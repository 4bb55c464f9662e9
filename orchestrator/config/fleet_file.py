"""Reading a fleet file (`fleet.yaml`): `defaults:` merged into each machine, every machine validated through the
union of the launchers' machine models that `launchers.registry` builds, errors with the file, line, field and fix.
The models themselves are in `config/fleet.py`; a new launcher changes nothing here."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from ..launchers import registry
from .fleet import Fleet, Machine
from .validation import raise_config_errors, validate_doc
from .yaml_source import YamlDoc, load_yaml_file, load_yaml_text


def _merge(defaults: dict, machine: dict, fields: set[str]) -> dict:
    """The machine's mapping over the defaults that its launcher's model has; mappings merge key by key (and a
    container's env one level deeper)."""
    merged = {**{k: v for k, v in defaults.items() if k in fields}, **machine}
    for key, value in defaults.items():
        if key in fields and isinstance(value, dict) and isinstance(machine.get(key), dict):
            merged[key] = {**value, **machine[key]}
    if isinstance(defaults.get("container"), dict) and isinstance(machine.get("container"), dict):
        if isinstance(defaults["container"].get("env"), dict) and isinstance(machine["container"].get("env"), dict):
            merged["container"]["env"] = {**defaults["container"]["env"], **machine["container"]["env"]}
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
    kinds = registry.machine_kinds()
    validate_doc(registry.defaults_model(), doc, defaults_raw, prefix=("defaults",))
    machines_raw = data.get("machines")
    if not isinstance(machines_raw, list) or not machines_raw:
        raise doc.error(("machines",), "must be a non-empty list of machines",
                        fix="add `machines:` with at least one `- name: ...` entry")
    machines: list[Machine] = []
    seen: dict[str, int] = {}
    by_kind: dict[str, list[tuple[int, Machine, dict]]] = {}
    for index, raw in enumerate(machines_raw):
        if not isinstance(raw, dict):
            raise doc.error(("machines", index), "each machine must be a mapping", fix="write `- name: NAME` and its fields")
        if "name" not in raw:
            raise doc.error(("machines", index), "machine has no name", fix="add `name: NAME` (unique in the fleet)")
        launcher = raw.get("launcher", defaults_raw.get("launcher", "local"))
        if launcher not in kinds:  # (defaults were checked above: here it is the machine's own)
            raise doc.error(("machines", index, "launcher"), f"unknown launcher, got {launcher!r}",
                            fix=f"use one of {', '.join(sorted(kinds))}")
        kind = kinds[launcher]
        merged = {**_merge(defaults_raw, raw, set(kind.model_fields)), "launcher": launcher}
        machine = _validate_machine(doc, registry, merged, index, launcher)
        if machine.name in seen:
            raise doc.error(("machines", index, "name"), f"duplicate machine name {machine.name!r} (also machines[{seen[machine.name]}])",
                            fix="give every machine a unique name")
        seen[machine.name] = index
        by_kind.setdefault(launcher, []).append((index, machine, raw))
        machines.append(machine)
    for launcher, entries in by_kind.items():
        kinds[launcher].check_fleet(doc, entries, defaults_raw)
    return Fleet(machines=machines, source=doc.file)


def _validate_machine(doc: YamlDoc, registry, merged: dict, index: int, launcher: str) -> Machine:
    """One machine entry through the registry's union of machine models; errors name the entry's fields (a field
    another launcher has gets that in its fix)."""
    try:
        return registry.machine_union().validate_python(merged)
    except ValidationError as exc:
        owners = registry.field_owners()

        def _fix_extra(field: str) -> str | None:
            others = sorted(owners.get(field, set()) - {launcher})
            if not others:
                return None
            return (f"`{field}` is a field of the {' and '.join(others)} launcher{'s' if len(others) > 1 else ''}; "
                    f"this machine has `launcher: {launcher}`: remove the field, or set the launcher")

        raise_config_errors(exc, doc, ("machines", index), strip_first=launcher, fix_extra=_fix_extra)


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
