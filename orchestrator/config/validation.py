"""Turn pydantic validation errors into ConfigErrors that name file, line, field and a fix."""

from __future__ import annotations

from typing import Any, Callable, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ConfigError, ConfigErrors
from .yaml_source import YamlDoc

Model = TypeVar("Model", bound=BaseModel)
#: validators raise ValueError(f"problem{FIX_MARK}fix") to give the fix separately
FIX_MARK = " || fix: "


_FIXES = {
    "extra_forbidden": "remove it, or check its spelling against the documented fields",
    "missing": "add this field",
    "too_short": "add at least one entry",
    "dict_type": "write a mapping of `key: value` lines",
    "list_type": "write a list, e.g. [a, b]",
    "string_type": "write a text value (quote it if it looks like a number)",
    "bool_type": "use true or false",
    "bool_parsing": "use true or false",
    "int_type": "use a whole number",
    "int_parsing": "use a whole number",
    "int_from_float": "use a whole number",
    "float_type": "use a number",
    "float_parsing": "use a number",
    "finite_number": "use a finite number (.nan, .inf and numbers beyond ±1.8e308 such as 1e400 are not allowed)",
    "string_pattern_mismatch": "use letters, digits, '.', '_' and '-' only",
}


def _fix_for(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind in _FIXES:
        return _FIXES[kind]
    ctx = error.get("ctx") or {}
    if "expected" in ctx:
        return f"use one of {ctx['expected']}"
    if kind.startswith(("greater_than", "less_than")):
        return "use a value within the allowed range"
    return "correct the value (see the documented fields)"


def validate_doc(model: type[Model], doc: YamlDoc, data: Any = None, prefix: tuple = ()) -> Model:
    """Validate `data` (default: the whole document) against `model`, mapping errors to lines."""
    data = doc.data if data is None else data
    if not isinstance(data, dict):
        raise doc.error(prefix, f"expected a mapping of fields, got {type(data).__name__}",
                        fix="write `key: value` fields at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise_config_errors(exc, doc, prefix)


def raise_config_errors(exc: ValidationError, doc: YamlDoc, prefix: tuple = (), strip_first: str | None = None,
                        fix_extra: Callable[[str], str | None] | None = None) -> NoReturn:
    """Raise `exc`'s errors as ConfigErrors at their lines. `strip_first`: the tag a discriminated union puts first
    in each location (the fleet's launcher name); `fix_extra(field)`: a better fix for an unknown field, or None."""
    errors: list[ConfigError] = []
    for err in exc.errors():
        parts = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        if strip_first is not None and parts[:1] == (strip_first,):
            parts = parts[1:]
        loc = prefix + parts
        msg, fix = err["msg"], _fix_for(err)
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
            better = fix_extra(str(parts[-1])) if fix_extra is not None and len(parts) == 1 else None
            fix = better or fix
        elif err.get("type") == "value_error":
            # our own validators write "problem" or "problem: fix" after FIX_MARK
            msg = msg.removeprefix("Value error, ")
            if FIX_MARK in msg:
                msg, fix = msg.split(FIX_MARK, 1)
        elif "input" in err and err.get("type") != "missing" and not isinstance(err["input"], (dict, list)):
            msg = f"{msg}, got {err['input']!r}"
        errors.append(doc.error(loc, msg, fix=fix))
    raise (errors[0] if len(errors) == 1 else ConfigErrors(errors)) from None
