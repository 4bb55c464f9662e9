"""nanochat: parameters become `--key=value` flags of `scripts.base_train` (argparse).

`target_param_data_ratio` -> `--target-param-data-ratio=8.25`. A bool True becomes the bare flag (`--fp8`, a
store_true switch); False leaves it out. Every flag is one argv element, so no value is ever interpreted by a
shell. With `options.script` (the path of base_train.py), names are checked against its `add_argument` calls,
and values against their `type=` (int/float) and `choices=`.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from ._script_scan import argparse_flags
from .base import Injection, InjectionError, Injector, check_scalar, format_number

_PARAM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def flag_name(param: str) -> str:
    return "--" + param.lstrip("-").replace("_", "-")


class NanochatInjector(Injector):
    name = "nanochat"

    def prepare(self, params: dict[str, Any], workdir: Path, options: dict[str, Any] | None = None) -> Injection:
        options = dict(options or {})
        known = argparse_flags(Path(options["script"])) if options.get("script") else None
        argv: list[str] = []
        seen: set[str] = set()
        for param, value in params.items():
            if not isinstance(param, str) or not _PARAM_NAME.match(param.lstrip("-")):
                raise InjectionError(f"parameter {param!r}: flag names are letters, digits, '-' and '_'")
            flag = flag_name(param)
            if flag in seen:
                raise InjectionError(f"parameters set {flag} twice")
            seen.add(flag)
            value = check_scalar(param, value)
            info = None
            if known is not None:
                info = known.get(flag)
                if info is None:
                    close = difflib.get_close_matches(flag, sorted(known), n=3)
                    hint = f"; did you mean {', '.join(close)}?" if close else ""
                    raise InjectionError(f"parameter {param!r}: {options['script']} has no {flag} option{hint}")
                _check_type(param, flag, value, info)
            if isinstance(value, bool):
                if info is not None and info.get("action") not in ("store_true", "store_false", None):
                    raise InjectionError(f"parameter {param!r}: {flag} takes a value, not a bool")
                if info is not None and info.get("action") is None and info.get("type") is not None:
                    raise InjectionError(f"parameter {param!r}: {flag} takes a {info['type']}, not a bool")
                if value:
                    argv.append(flag)
                continue
            text = value if isinstance(value, str) else format_number(value)
            argv.append(f"{flag}={text}")
        diff = "".join(f"+{arg}\n" for arg in argv)
        diff = f"--- a/argv\n+++ b/argv\n@@ -0,0 +1,{len(argv)} @@\n{diff}" if argv else ""
        return Injection(files=[], argv=argv, env={}, diff=diff)


def _check_type(param: str, flag: str, value: Any, info: dict) -> None:
    kind = info.get("type")
    if info.get("action") in ("store_true", "store_false"):
        if not isinstance(value, bool):
            raise InjectionError(f"parameter {param!r}: {flag} is a switch; give true or false, got {value!r}")
        return
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            raise InjectionError(f"parameter {param!r}: {flag} takes an int; give {int(value)} not {value!r}")
        raise InjectionError(f"parameter {param!r}: {flag} takes an int, got {value!r}")
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise InjectionError(f"parameter {param!r}: {flag} takes a number, got {value!r}")
    choices = info.get("choices")
    if choices is not None and value not in choices:
        raise InjectionError(f"parameter {param!r}: {flag} must be one of {choices}, got {value!r}")
