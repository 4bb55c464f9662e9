"""Read, with `ast` (never by running it), which knobs a training script accepts."""

from __future__ import annotations

import ast
from pathlib import Path

from .base import InjectionError


def _parse(script: Path) -> ast.Module:
    try:
        return ast.parse(Path(script).read_text(encoding="utf-8"))
    except OSError as err:
        raise InjectionError(f"{script}: cannot read the training script ({err.strerror or err})") from None
    except SyntaxError as err:
        raise InjectionError(f"{script}: not valid Python (line {err.lineno}: {err.msg})") from None


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
