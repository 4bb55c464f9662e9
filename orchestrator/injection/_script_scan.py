"""Read, with `ast` (never by running it), which knobs a training script accepts.

A packed script (parameter-golf records ship `exec(lzma.decompress(base64.b85decode("...")))` to save code bytes)
is unpacked first: the `decompress(b85decode/b64decode("literal"))` payload is decoded (never executed) and parsed
in its place, so its `os.environ.get("NAME")` reads are seen.
"""

from __future__ import annotations

import ast
import base64
import bz2
import gzip
import lzma
import zlib
from pathlib import Path

from .base import InjectionError


MAX_UNPACKED_BYTES = 16 * 1024 * 1024
_DECODERS = {"b85decode": base64.b85decode, "b64decode": base64.b64decode, "a85decode": base64.a85decode}
_DECOMPRESSORS = {"lzma": lzma.decompress, "zlib": zlib.decompress, "gzip": gzip.decompress, "bz2": bz2.decompress}


def _attr(node: ast.AST) -> str | None:
    return node.attr if isinstance(node, ast.Attribute) else (node.id if isinstance(node, ast.Name) else None)


def _module_of(node: ast.AST, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return aliases.get(node.value.id, node.value.id)
    return None


def _unpacked(tree: ast.Module) -> list[str]:
    """Sources packed as `decompress(b85decode("..."))` literals in `tree` (decoded, not run)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _attr(node.func) == "decompress" and node.args):
            continue
        inner = node.args[0]
        if not (isinstance(inner, ast.Call) and _attr(inner.func) in _DECODERS and inner.args
                and isinstance(inner.args[0], ast.Constant) and isinstance(inner.args[0].value, (str, bytes))):
            continue
        module = _module_of(node.func, aliases) or "lzma"
        decompress = _DECOMPRESSORS.get(module, lzma.decompress)
        try:
            raw = decompress(_DECODERS[_attr(inner.func)](inner.args[0].value))
        except Exception:  # not a packed script after all
            continue
        if len(raw) <= MAX_UNPACKED_BYTES:
            out.append(raw.decode("utf-8", errors="replace"))
    return out


def _parse(script: Path) -> ast.Module:
    """The script's syntax tree; a packed script's payload is parsed and its statements appended."""
    try:
        tree = ast.parse(Path(script).read_text(encoding="utf-8"))
    except OSError as err:
        raise InjectionError(f"{script}: cannot read the training script ({err.strerror or err})") from None
    except SyntaxError as err:
        raise InjectionError(f"{script}: not valid Python (line {err.lineno}: {err.msg})") from None
    for source in _unpacked(tree):
        try:
            tree.body.extend(ast.parse(source).body)
        except SyntaxError as err:
            raise InjectionError(f"{script}: its packed source is not valid Python (line {err.lineno}: {err.msg})") from None
    return tree


def is_packed(script: Path) -> bool:
    try:
        return bool(_unpacked(ast.parse(Path(script).read_text(encoding="utf-8"))))
    except (OSError, SyntaxError):
        return False


def env_var_names(script: Path) -> set[str]:
    """Names read through os.environ.get("X"), os.getenv("X"), os.environ["X"] or environ.get("X")."""
    names: set[str] = set()
    for node in ast.walk(_parse(script)):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("get", "getenv", "setdefault", "pop"):
                owner = func.value
                is_environ = (isinstance(owner, ast.Attribute) and owner.attr == "environ") or (
                    isinstance(owner, ast.Name) and owner.id in ("environ", "os")
                )
                if is_environ and isinstance(node.args[0].value, str):
                    names.add(node.args[0].value)
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            owner = node.value
            if isinstance(owner, ast.Attribute) and owner.attr == "environ" and isinstance(node.slice.value, str):
                names.add(node.slice.value)
    return names


def env_var_types(script: Path) -> dict[str, str]:
    """NAME -> "int" | "float" | "bool" for variables the script converts: `int(os.environ.get("NAME", ...))`,
    `float(...)`, `bool(int(...))`; others are absent (read as text)."""
    types: dict[str, str] = {}
    for node in ast.walk(_parse(script)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("int", "float", "bool")
                and node.args):
            continue
        arg = node.args[0]
        while isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id in ("int", "float") and arg.args:
            arg = arg.args[0]  # bool(int(os.environ.get(...)))
        name = _env_read(arg)
        if name is not None:
            types.setdefault(name, node.func.id)
    return types


def _env_read(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(
            node.args[0].value, str) and _attr(node.func) in ("get", "getenv"):
        return node.args[0].value
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and _attr(node.value) == "environ":
        return node.slice.value if isinstance(node.slice.value, str) else None
    return None


def argparse_flags(script: Path) -> dict[str, dict]:
    """`--flag` -> {"type": "int"|"float"|"str"|None, "action": ..., "choices": [...]|None} from add_argument calls."""
    flags: dict[str, dict] = {}
    for node in ast.walk(_parse(script)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"):
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        long = next((n for n in names if n.startswith("--")), None)
        if long is None:
            continue
        info: dict = {"type": None, "action": None, "choices": None}
        for kw in node.keywords:
            if kw.arg == "type" and isinstance(kw.value, ast.Name):
                info["type"] = kw.value.id
            elif kw.arg == "action" and isinstance(kw.value, ast.Constant):
                info["action"] = kw.value.value
            elif kw.arg == "choices":
                try:
                    info["choices"] = list(ast.literal_eval(kw.value))
                except ValueError:
                    pass
        flags[long] = info
    return flags
