"""The parameter-injection plug-in interface: turn a trial's parameters into what its job needs.

An `Injector` knows how one trainer takes parameters: a patched copy of its script (modded-nanogpt), environment
variables (parameter-golf) or command-line flags (nanochat). `prepare` validates every value first and returns an
`Injection`: the files it wrote under the trial's workdir, extra argv elements and environment variables (each
value a separate string, never pasted into a shell line), and a unified diff text to store on the trial so a
record write-up can show exactly what changed.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


class InjectionError(ValueError):
    """A parameter (or option) that cannot be injected; the message names the parameter and the fix."""


@dataclass
class Injection:
    files: list[Path] = field(default_factory=list)  # files written (absolute paths under workdir)
    argv: list[str] = field(default_factory=list)  # extra command-line arguments, one element each
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables
    diff: str = ""  # unified diff text of what changed, for the trial record


def resolve_path_options(options: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of an injection's options with its file options (`script`, each of `companions`) made absolute
    against `base`, the study file's directory."""
    options = dict(options)
    if options.get("script"):
        options["script"] = str((base / str(options["script"])).resolve())
    if isinstance(options.get("companions"), list):
        options["companions"] = [str((base / str(c)).resolve()) for c in options["companions"]]
    return options


def companion_files(source: str, script: Path, options: dict[str, Any]) -> list[Path]:
    """The files a trial needs beside its script: the modules the script imports from its own folder (found in its
    syntax tree; a packed or unparsable script has none), then the `companions` option's files (a later file of the
    same name wins)."""
    found: dict[str, Path] = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = ast.Module(body=[], type_ignores=[])
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        for name in names:
            path = script.parent / (name.split(".")[0] + ".py")
            if path.is_file() and path.resolve() != script.resolve():
                found[path.name] = path
    extra = options.get("companions") or []
    if not isinstance(extra, list):
        raise InjectionError(f"options.companions: give a list of files, got {extra!r}")
    for item in extra:
        path = Path(str(item))
        if not path.is_file():
            raise InjectionError(f"options.companions: {path} is not a file; fix the path (relative to the study file)")
        found[path.name] = path
    return list(found.values())


def copy_into(paths: list[Path], workdir: Path, edits: list[dict[str, str]] | None = None) -> tuple[list[Path], str]:
    """Copy files into the trial's workdir (where its job runs), each under its own name, with the `edits` meant
    for them applied (see `source_edits`); returns the copies and the unified diff of the edited ones (a file
    already there is left as it is)."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    copies, diff = [], ""
    for path in paths:
        target = Path(workdir) / path.name
        mine = [e for e in edits or () if e["file"] == path.name]
        if mine:
            text = path.read_text(encoding="utf-8")
            edited = apply_edits(text, mine, path.name)
            target.write_text(edited, encoding="utf-8")
            diff += text_diff(text, edited, path.name, path.name)
        elif target.resolve() != path.resolve():
            target.write_bytes(path.read_bytes())
        copies.append(target.resolve())
    return copies, diff


def source_edits(options: dict[str, Any], script_name: str, available: list[str]) -> list[dict[str, str]]:
    """The `edits` option, checked: exact text replacements in the trial's copy of the script or of one of its
    companion files, for what a machine needs changed in a trainer that is not this project's (an API the
    installed library dropped, a layout a kernel library refuses). Each is `{find: TEXT, replace: TEXT}` with an
    optional `file:` (a companion's file name; default the script); the find text must occur exactly once. The
    edits show in the diff stored on the trial, so a write-up can say what was changed."""
    raw = options.get("edits") or []
    if not isinstance(raw, list):
        raise InjectionError(f"options.edits: give a list of {{find: ..., replace: ...}}, got {raw!r}")
    edits = []
    for i, item in enumerate(raw):
        where = f"options.edits[{i}]"
        if not isinstance(item, dict) or set(item) - {"find", "replace", "file"}:
            raise InjectionError(f"{where}: give a mapping with find, replace and optionally file, got {item!r}")
        find, replace, file = item.get("find"), item.get("replace"), item.get("file", script_name)
        if not isinstance(find, str) or not find:
            raise InjectionError(f"{where}.find: give the exact text to replace (a non-empty string)")
        if not isinstance(replace, str):
            raise InjectionError(f"{where}.replace: give the replacement text (a string; empty deletes)")
        if file not in available:
            raise InjectionError(f"{where}.file: {file!r} is not among the trial's files ({', '.join(available)})")
        edits.append({"find": find, "replace": replace, "file": file, "where": where})
    return edits


def apply_edits(text: str, edits: list[dict[str, str]], name: str) -> str:
    """`text` with each edit applied in order; an edit whose find text does not occur exactly once is an error."""
    for edit in edits:
        count = text.count(edit["find"])
        if count != 1:
            shown = edit["find"] if len(edit["find"]) <= 60 else edit["find"][:57] + "..."
            raise InjectionError(
                f"{edit['where']}.find: {shown!r} occurs {count} times in {name}; it must occur exactly once "
                "(give more of the surrounding text, or fix it for this version of the file)")
        text = text.replace(edit["find"], edit["replace"])
    return text


def text_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        f"a/{old_name}", f"b/{new_name}"))


class Injector:
    """One trainer's way of taking parameters. Register instances in `orchestrator.injection.registry`."""

    name: ClassVar[str]

    def prepare(self, params: dict[str, Any], workdir: Path, options: dict[str, Any] | None = None) -> Injection:
        raise NotImplementedError

    def check(self, samples: list[dict[str, Any]], options: dict[str, Any] | None = None) -> list[str]:
        """What a study would hit at its first trial, found before it starts: `samples` are parameter sets the
        study can produce (e.g. every parameter at its low and at its high end). The default prepares each in a
        scratch directory (a patch that cannot apply, a name the script never reads, a value of the wrong type)
        and returns the problems, one line each; an injector with a script option also needs the script to exist."""
        import tempfile

        options = dict(options or {})
        problems: list[str] = []
        script = options.get("script")
        if script is not None and not Path(str(script)).is_file():
            return [f"the training script {script} does not exist (inject.options.script)"]
        for params in samples:
            with tempfile.TemporaryDirectory(prefix="orch-check-") as scratch:
                try:
                    self.prepare(params, Path(scratch), options)
                except InjectionError as err:
                    if str(err) not in problems:
                        problems.append(str(err))
        return problems


# ----------------------------------------------------------------------------------------------------------
# value checks shared by the injectors

_SAFE_TEXT = re.compile(r"^[^\x00-\x1f\x7f]*$")


def check_scalar(name: str, value: Any) -> bool | int | float | str:
    """A parameter value must be a finite number, a bool, or a single-line string without control characters."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InjectionError(f"parameter {name!r}: {value!r} is not a finite number")
        return value
    if isinstance(value, str):
        if not _SAFE_TEXT.match(value):
            raise InjectionError(
                f"parameter {name!r}: string values may not contain newlines or control characters ({value!r})"
            )
        return value
    try:  # numpy scalars and friends (what Optuna samples can be)
        import numbers

        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            return check_scalar(name, float(value))
    except Exception:  # pragma: no cover - defensive
        pass
    raise InjectionError(
        f"parameter {name!r}: unsupported value {value!r} of type {type(value).__name__}; "
        "use a number, a bool or a string"
    )


def format_number(value: int | float) -> str:
    """Shortest text that reads back to the same number (`repr` of a float round-trips)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(int(value))


def env_diff(before: dict[str, str], after: dict[str, str], label: str) -> str:
    import difflib

    old = [f"{k}={v}\n" for k, v in sorted(before.items())]
    new = [f"{k}={v}\n" for k, v in sorted(after.items())]
    return "".join(difflib.unified_diff(old, new, f"a/{label}", f"b/{label}"))
