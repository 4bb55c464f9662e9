"""modded-nanogpt: a patched copy of `train_gpt.py` per trial, edited through its syntax tree.

The script is parsed with `ast`; each parameter names one value expression in it, and exactly that source
segment is replaced by the new value's Python literal. Everything else (formatting, comments, the rest of the
line) is kept byte for byte, so the diff stored on the trial shows only the changed values. No regex touches
the code.

Parameter names:

- `stages[I].FIELD` (or `stages.I.FIELD`): keyword FIELD of the I-th `TrainingStage(...)` call in the module-level
  list of them (`TRAINING_STAGES = [TrainingStage(duration=1/3, batch_size=8 * 2048 * 8, ...), ...]`).
- `stage_durations`: a list with the `duration` of every stage that has one, in order.
- `NAME`: a module-level constant (`NAME = ...` or `NAME: T = ...`), e.g. `TRAIN_MAX_NUM_DOCS`.
- `Class.attr`: a class-level field of a module-level class, e.g. `Hyperparameters.num_scheduled_iterations`.

Checks: values are literals of the old value's type (an int where an int was, a number where a float was, ...);
stage durations are non-negative and sum to 1 (within `duration_tolerance`); batch sizes are positive multiples
of `ranks` (world size x grad-accum, 8 in modded-nanogpt) and, when the script declares a document cap per
batch (`TRAIN_MAX_NUM_DOCS = {tokens_per_rank: max_docs}`), have an entry in it. The patched file is parsed
again and every value is read back before it is written.

Options: `script` (path of the train_gpt.py to patch; required), `output` (file name under workdir; default the
script's name), `duration_tolerance` (1e-6), `ranks` (8), `stages_variable` (name of the stage list; default:
found by looking for a module-level list of TrainingStage calls), `stage_class` ("TrainingStage"), `companions`
(more files copied unchanged beside the patched script, e.g. a stand-in module; paths relative to the study file),
`edits` (exact text replacements in the trial's copy of the script or a companion, for what a machine needs
changed; `base.source_edits`; they are part of the trial's diff).

Companion modules: the current script imports modules that lie beside it (`from triton_kernels import ...`) and
reads their source for its log. Every module the script imports that exists as `NAME.py` in the script's folder is
copied beside the patched script too, so the trial directory runs as the checkout does.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import re
from pathlib import Path
from typing import Any

from .base import (Injection, InjectionError, Injector, apply_edits, check_scalar, companion_files, copy_into,
                   source_edits, text_diff)

_STAGE_PARAM = re.compile(r"^stages?(?:\[(?P<i1>\d+)\]|\.(?P<i2>\d+))\.(?P<field>[A-Za-z_]\w*)$")
_IDENT = re.compile(r"^[A-Za-z_]\w*$")
_CLASS_ATTR = re.compile(r"^(?P<cls>[A-Za-z_]\w*)\.(?P<attr>[A-Za-z_]\w*)$")

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_NOT_CONST = object()


def const_eval(node: ast.AST) -> Any:
    """The value of a constant expression (literals, + - * / // % **, tuples, lists, dicts); _NOT_CONST otherwise."""
    try:
        return _eval(node)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError, KeyError):
        return _NOT_CONST


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand)
        if not isinstance(value, (int, float)):
            raise ValueError
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if not (isinstance(left, (int, float)) and isinstance(right, (int, float))):
            raise ValueError
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_eval(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError
        return {_eval(k): _eval(v) for k, v in zip(node.keys, node.values)}
    raise ValueError


def render(value: Any, name: str) -> str:
    """A Python literal for `value` (validated: finite numbers, bools, single-line strings, lists/tuples/dicts)."""
    if isinstance(value, (list, tuple)):
        parts = [render(v, name) for v in value]
        if isinstance(value, tuple):
            return "(" + parts[0] + ",)" if len(parts) == 1 else "(" + ", ".join(parts) + ")"
        return "[" + ", ".join(parts) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{render(k, name)}: {render(v, name)}" for k, v in value.items()) + "}"
    if value is None:
        return "None"
    value = check_scalar(name, value)
    return repr(value)


def _whole_float_for_int(old: Any, new: Any) -> bool:
    return (isinstance(old, int) and not isinstance(old, bool) and isinstance(new, float) and math.isfinite(new)
            and new.is_integer())


def _type_ok(old: Any, new: Any) -> bool:
    if old is _NOT_CONST:
        return True
    if isinstance(old, bool):
        return isinstance(new, bool)
    if isinstance(old, int):
        return isinstance(new, int) and not isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float)) and not isinstance(new, bool)
    if isinstance(old, str):
        return isinstance(new, str)
    if isinstance(old, (tuple, list)):
        return isinstance(new, (tuple, list)) and all(
            _type_ok(o, n) for o, n in zip(old, new)
        ) if len(old) == len(new) else isinstance(new, (tuple, list))
    if isinstance(old, dict):
        return isinstance(new, dict)
    if old is None:
        return True
    return False


def _describe(value: Any) -> str:
    return type(value).__name__ if value is not _NOT_CONST else "expression"


class _Source:
    """Source text with conversions from ast (line, utf-8 byte column) positions to character offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def offset(self, lineno: int, col_bytes: int) -> int:
        line = self.lines[lineno - 1]
        col = len(line.encode("utf-8")[:col_bytes].decode("utf-8", errors="ignore"))
        return self.starts[lineno - 1] + col

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)


class _Targets:
    """The patchable value expressions of a script."""

    def __init__(self, tree: ast.Module, stage_class: str, stages_variable: str | None) -> None:
        self.constants: dict[str, ast.expr] = {}
        self.class_attrs: dict[str, ast.expr] = {}
        self.stage_list_name: str | None = None
        self.stages: list[ast.Call] | None = None
        for stmt in tree.body:
            name, value = _assigned(stmt)
            if name is not None and value is not None:
                self.constants.setdefault(name, value)
                if self.stages is None and isinstance(value, ast.List) and value.elts and all(
                    _is_call_to(e, stage_class) for e in value.elts
                ) and (stages_variable is None or stages_variable == name):
                    self.stage_list_name, self.stages = name, list(value.elts)  # type: ignore[arg-type]
            if isinstance(stmt, ast.ClassDef):
                for inner in stmt.body:
                    attr, value = _assigned(inner)
                    if attr is not None and value is not None:
                        self.class_attrs.setdefault(f"{stmt.name}.{attr}", value)


def script_values(source: str, stage_class: str = "TrainingStage") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What a script sets, read as the patch reads it: its module-level constants and class fields (`NAME`,
    `Class.attr`) and each stage's keywords, as values (`_NOT_CONST`-free: an expression that is not a constant is
    left out)."""
    targets = _Targets(ast.parse(source), stage_class, None)
    values = {name: const_eval(node) for name, node in {**targets.constants, **targets.class_attrs}.items()}
    stages = [{k.arg: const_eval(k.value) for k in call.keywords if k.arg} for call in targets.stages or []]
    drop = lambda d: {k: v for k, v in d.items() if v is not _NOT_CONST}  # noqa: E731
    return drop(values), [drop(stage) for stage in stages]


def _assigned(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return stmt.target.id, stmt.value
    return None, None


def _is_call_to(node: ast.AST, name: str) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Name) and func.id == name) or (isinstance(func, ast.Attribute) and func.attr == name)


def _keyword(call: ast.Call, field: str) -> ast.keyword | None:
    return next((k for k in call.keywords if k.arg == field), None)


class ModdedNanoGPTInjector(Injector):
    name = "modded-nanogpt"

    def prepare(self, params: dict[str, Any], workdir: Path, options: dict[str, Any] | None = None) -> Injection:
        options = dict(options or {})
        script = options.get("script")
        if not script:
            raise InjectionError(
                "modded-nanogpt injection needs options.script: the path of the train_gpt.py to patch"
            )
        script = Path(script)
        try:
            original = script.read_text(encoding="utf-8")
        except OSError as err:
            raise InjectionError(f"{script}: cannot read the training script ({err.strerror or err})") from None
        patched = patch_source(original, params, options, label=str(script))
        out_name = options.get("output") or script.name
        if Path(out_name).name != out_name:
            raise InjectionError(f"options.output {out_name!r}: give a file name, not a path")
        companions = companion_files(original, script, options)
        edits = source_edits(options, script.name, [script.name, *(c.name for c in companions)])
        patched = apply_edits(patched, [e for e in edits if e["file"] == script.name], script.name)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        target = workdir / out_name
        target.write_text(patched, encoding="utf-8")
        copied, companion_diff = copy_into(companions, workdir, edits)
        diff = text_diff(original, patched, script.name, out_name) + companion_diff
        return Injection(files=[target.resolve(), *copied], argv=[], env={}, diff=diff)


def patch_source(source: str, params: dict[str, Any], options: dict[str, Any] | None = None, label: str = "script") -> str:
    """Return `source` with the parameters' values replaced (see the module docstring); raises InjectionError."""
    options = dict(options or {})
    stage_class = options.get("stage_class", "TrainingStage")
    tolerance = float(options.get("duration_tolerance", 1e-6))
    ranks = int(options.get("ranks", 8))
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise InjectionError(f"{label}: not valid Python (line {err.lineno}: {err.msg}); pass the train_gpt.py itself") from None
    src = _Source(source)
    targets = _Targets(tree, stage_class, options.get("stages_variable"))

    edits: dict[tuple[int, int], tuple[str, ast.expr, Any, str]] = {}  # span -> (text, node, value, param)
    stage_values: dict[tuple[int, str], Any] = {}
    constant_values: dict[str, Any] = {}

    def need_stages(param: str) -> list[ast.Call]:
        if targets.stages is None:
            where = f" named {options['stages_variable']!r}" if options.get("stages_variable") else ""
            raise InjectionError(
                f"{label}: parameter {param!r} needs the module-level list{where} of {stage_class}(...) calls "
                f"(e.g. TRAINING_STAGES = [{stage_class}(duration=..., batch_size=...), ...]) and this script has "
                "none; it predates staged training or names it differently (set options.stages_variable / "
                "options.stage_class), or patch a module-level constant instead"
            )
        return targets.stages

    def add(param: str, node: ast.expr, value: Any) -> None:
        old = const_eval(node)
        if _whole_float_for_int(old, value):  # a derived value is a float: 60.0 where the script has 60
            value = int(value)
        if not _type_ok(old, value):
            raise InjectionError(
                f"parameter {param!r}: the script has a value of type {_describe(old)} there "
                f"({ast.get_source_segment(source, node)}), got {value!r} ({type(value).__name__})"
            )
        text = render(value, param)
        span = src.span(node)
        if span in edits and edits[span][0] != text:
            raise InjectionError(f"parameter {param!r} sets the same value as {edits[span][3]!r} differently")
        edits[span] = (text, node, value, param)

    for param, value in params.items():
        if not isinstance(param, str):
            raise InjectionError(f"parameter names must be strings, got {param!r}")
        if param == "stage_durations":
            stages = need_stages(param)
            with_duration = [(i, _keyword(c, "duration")) for i, c in enumerate(stages)]
            with_duration = [(i, k) for i, k in with_duration if k is not None and not _is_none(k.value)]
            if not isinstance(value, (list, tuple)) or len(value) != len(with_duration):
                raise InjectionError(
                    f"parameter 'stage_durations': give a list of {len(with_duration)} numbers (one per stage "
                    f"with a duration, stages {[i for i, _ in with_duration]}), got {value!r}"
                )
            for (i, kw), v in zip(with_duration, value):
                add(f"stages[{i}].duration", kw.value, _number(f"stages[{i}].duration", v))
                stage_values[(i, "duration")] = v
            continue
        match = _STAGE_PARAM.match(param)
        if match:
            stages = need_stages(param)
            index = int(match["i1"] or match["i2"])
            field = match["field"]
            if index >= len(stages):
                raise InjectionError(
                    f"parameter {param!r}: the script's {targets.stage_list_name} has {len(stages)} stages "
                    f"(indices 0..{len(stages) - 1})"
                )
            kw = _keyword(stages[index], field)
            if kw is None:
                have = ", ".join(k.arg for k in stages[index].keywords if k.arg)
                raise InjectionError(
                    f"parameter {param!r}: {stage_class} #{index} has no {field}= keyword to replace "
                    f"(it has: {have}); only keywords the script already passes can be set"
                )
            if field == "duration" and _is_none(kw.value):
                raise InjectionError(f"parameter {param!r}: stage {index} has duration=None (the extension stage)")
            add(param, kw.value, value)
            stage_values[(index, field)] = value
            continue
        if _IDENT.match(param) and param in targets.constants:
            add(param, targets.constants[param], value)
            constant_values[param] = value
            continue
        if _CLASS_ATTR.match(param) and param in targets.class_attrs:
            add(param, targets.class_attrs[param], value)
            continue
        close = difflib.get_close_matches(
            param, [*targets.constants, *targets.class_attrs, "stage_durations", "stages[0].duration"], n=3
        )
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InjectionError(
            f"parameter {param!r}: no such stage field, module-level constant or class field in {label}{hint}; "
            "use stages[I].FIELD, stage_durations, NAME or Class.attr"
        )

    if targets.stages is not None and any(field in ("duration", "batch_size") for _, field in stage_values):
        _check_stages(targets, stage_values, constant_values, tolerance, ranks, label)

    # apply from the end so earlier offsets stay valid
    text = source
    for (start, end), (new_text, _node, _value, _param) in sorted(edits.items(), reverse=True):
        text = text[:start] + new_text + text[end:]

    # parse the result again and read every value back
    try:
        new_tree = ast.parse(text)
    except SyntaxError as err:  # pragma: no cover - render() only emits literals
        raise InjectionError(f"{label}: the patched script does not parse (line {err.lineno}: {err.msg})") from None
    new_targets = _Targets(new_tree, stage_class, targets.stage_list_name)
    for _span, (_t, _node, value, param) in edits.items():
        node = _lookup(new_targets, param)
        got = const_eval(node) if node is not None else _NOT_CONST
        if not _same(got, value):
            raise InjectionError(f"{label}: parameter {param!r} did not read back after patching (got {got!r})")
    return text


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _number(param: str, value: Any) -> float | int:
    value = check_scalar(param, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InjectionError(f"parameter {param!r}: expected a number, got {value!r}")
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=0, abs_tol=0)
    return a == b


def _lookup(targets: _Targets, param: str) -> ast.expr | None:
    match = _STAGE_PARAM.match(param)
    if match and targets.stages is not None:
        kw = _keyword(targets.stages[int(match["i1"] or match["i2"])], match["field"])
        return kw.value if kw else None
    return targets.constants.get(param) or targets.class_attrs.get(param)


def _check_stages(targets: _Targets, new: dict[tuple[int, str], Any], constants: dict[str, Any],
                  tolerance: float, ranks: int, label: str) -> None:
    stages = targets.stages or []
    # durations: every stage that has one (the extension stage has none), after the change
    durations = []
    for i, call in enumerate(stages):
        kw = _keyword(call, "duration")
        if kw is None or _is_none(kw.value):
            continue
        value = new.get((i, "duration"), const_eval(kw.value))
        if value is _NOT_CONST or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InjectionError(
                f"{label}: stage {i}'s duration is not a constant number ({_segment(kw.value)}), "
                "so the durations cannot be checked; set it too (stage_durations)"
            )
        if value < 0 or not math.isfinite(value):
            raise InjectionError(f"parameter 'stages[{i}].duration': {value!r} is negative; durations are fractions >= 0")
        durations.append((i, value))
    if durations and any(field == "duration" for _, field in new):
        total = sum(v for _, v in durations)
        if abs(total - 1.0) > tolerance:
            listing = ", ".join(f"stages[{i}]={v:g}" for i, v in durations)
            raise InjectionError(
                f"stage durations must sum to 1 (within {tolerance:g}); they sum to {total:.9g} ({listing}). "
                "Set all of them together (stage_durations=[...]) so they add up"
            )
    # batch sizes
    caps = None
    for name, node in targets.constants.items():
        if name.endswith("MAX_NUM_DOCS"):
            value = constants.get(name, const_eval(node))
            if isinstance(value, dict):
                caps = (name, value)
                break
    for i, call in enumerate(stages):
        if (i, "batch_size") not in new:
            continue
        value = new[(i, "batch_size")]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InjectionError(f"parameter 'stages[{i}].batch_size': {value!r} is not a positive integer")
        if value % ranks:
            raise InjectionError(
                f"parameter 'stages[{i}].batch_size': {value} is not a multiple of {ranks} "
                "(world size x grad-accum steps; options.ranks)"
            )
        if caps is not None:
            name, table = caps
            per_rank = value // ranks
            if per_rank not in table:
                allowed = ", ".join(f"{k * ranks} ({k}/rank: {v} docs)" for k, v in sorted(table.items()))
                raise InjectionError(
                    f"parameter 'stages[{i}].batch_size': {value} gives {per_rank} tokens per rank, which the script's "
                    f"{name} has no document cap for; allowed batch sizes: {allowed}. Pick one, or set {name} too"
                )


def _segment(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # pragma: no cover
        return "?"

