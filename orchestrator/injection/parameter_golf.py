"""parameter-golf: parameters become environment variables (its train_gpt.py reads `os.environ.get("NAME", ...)`).

Parameter names map to variable names by upper-casing (`matrix_lr` -> `MATRIX_LR`); names already upper-case are
kept. Values: bools become `1`/`0`, numbers their shortest round-tripping text, strings must be one line without
control characters. With `options.script` (the train_gpt.py of the run), every name is checked against the
variables the script actually reads, so a typo is an error instead of a silently ignored setting.

Values are also formatted for the type the script converts them to: a variable read as `int(os.environ.get(...))`
gets `1200` for 1200.0 (what `int()` accepts), and a non-whole number for it is an error, not a crash of every
trial. A packed script (`exec(lzma.decompress(base64.b85decode("...")))`) is unpacked (decoded, never run) first.

Options: `script` (optional path, enables the name and type checks), `extra_allowed` (names to accept anyway),
`companions` (more files for the trial directory), `edits` (exact text replacements in the trial's copies:
`base.source_edits`). With `script`, the script (unchanged), the modules it imports from
its folder and the companions are copied into the trial directory, where the job runs (`torchrun ... train_gpt.py`).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from ._script_scan import env_var_names, env_var_types
from .base import (Injection, InjectionError, Injector, check_scalar, companion_files, copy_into, env_diff,
                   format_number, source_edits)

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ParameterGolfInjector(Injector):
    name = "parameter-golf"

    def prepare(self, params: dict[str, Any], workdir: Path, options: dict[str, Any] | None = None) -> Injection:
        options = dict(options or {})
        known: set[str] | None = None
        types: dict[str, str] = {}
        if options.get("script"):
            known = env_var_names(Path(options["script"])) | set(options.get("extra_allowed") or ())
            types = env_var_types(Path(options["script"]))
        env: dict[str, str] = {}
        for param, value in params.items():
            if not isinstance(param, str) or not _PARAM_NAME.match(param):
                raise InjectionError(
                    f"parameter {param!r}: an environment variable name must be letters, digits and underscores"
                )
            var = param if param.isupper() else param.upper()
            if not _ENV_NAME.match(var):  # pragma: no cover - implied by _PARAM_NAME
                raise InjectionError(f"parameter {param!r}: {var!r} is not a valid environment variable name")
            if known is not None and var not in known:
                close = difflib.get_close_matches(var, sorted(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise InjectionError(
                    f"parameter {param!r}: the script {options['script']} never reads ${var}{hint} "
                    "(add it to options.extra_allowed if it is read indirectly)"
                )
            value = check_scalar(param, value)
            if types.get(var) == "int" and isinstance(value, float):
                if not value.is_integer():
                    raise InjectionError(
                        f"parameter {param!r}: the script reads ${var} with int(), so {value!r} would crash it; "
                        "make the parameter type: int (or give it whole-number values)")
                value = int(value)
            if types.get(var) in ("int", "float") and isinstance(value, str):
                raise InjectionError(f"parameter {param!r}: the script reads ${var} as a number, got {value!r}")
            text = value if isinstance(value, str) else format_number(value)
            if var in env and env[var] != text:
                raise InjectionError(f"parameters set ${var} twice with different values")
            env[var] = text
        files: list[Path] = []
        edit_diff = ""
        if options.get("script"):  # the script, unchanged, and what it needs beside it
            script = Path(options["script"])
            source = script.read_text(encoding="utf-8", errors="replace")
            companions = companion_files(source, script, options)
            edits = source_edits(options, script.name, [script.name, *(c.name for c in companions)])
            files, edit_diff = copy_into([script, *companions], Path(workdir), edits)
        elif options.get("edits"):
            raise InjectionError("options.edits: edits need options.script (the file they change)")
        return Injection(files=files, argv=[], env=env, diff=env_diff({}, env, "environment") + edit_diff)
