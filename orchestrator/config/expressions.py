"""Safe arithmetic for derived parameters (`stage3 = 1 - stage1 - stage2`): a tiny AST evaluator.

Only numbers, parameter names, + - * / // % **, unary minus, and min/max/abs/round/sqrt/log/exp are allowed,
so a study file can never run code. Its cost is bounded too: the text, the number of AST nodes and their
nesting are limited before anything is evaluated (Python's own parser ends a long unary chain with a
MemoryError and deep nesting with a RecursionError), and every value is a float that must stay finite and
within MAX_MAGNITUDE, so `9**9**9` is refused at once instead of computing a 370-million-digit integer (which
also blocks SIGTERM while it runs).
"""

from __future__ import annotations

import ast
import math
import operator

MAX_CHARS = 1000
MAX_NODES = 200
MAX_DEPTH = 24
#: the largest magnitude of any value an expression computes, its intermediate values included
MAX_MAGNITUDE = 1e100
MAX_ROUND_DIGITS = 15

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _round(value: float, digits: float = 0.0) -> float:
    if digits != int(digits) or abs(digits) > MAX_ROUND_DIGITS:
        raise ValueError(f"round()'s digits must be a whole number within ±{MAX_ROUND_DIGITS}")
    return float(round(value, int(digits)))


#: name -> (function, fewest arguments, most arguments)
_FUNCTIONS = {
    "min": (min, 1, 16), "max": (max, 1, 16), "abs": (abs, 1, 1), "round": (_round, 1, 2),
    "sqrt": (math.sqrt, 1, 1), "log": (math.log, 1, 2), "exp": (math.exp, 1, 1),
}
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Constant, ast.Call, *_BINARY, *_UNARY)


class ExpressionError(ValueError):
    pass


class ExpressionTooCostly(ExpressionError):
    """The expression is too large, or a value it computes is too large: refused wherever it is evaluated."""


def _depth(tree: ast.AST) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in ast.iter_child_nodes(node))
    return deepest


def parse_expression(text: str) -> ast.Expression:
    text = str(text)
    if len(text) > MAX_CHARS:
        raise ExpressionTooCostly(f"the expression is {len(text)} characters long, more than the {MAX_CHARS} allowed")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not an arithmetic expression: {exc.msg}") from None
    except ValueError as exc:  # a NUL byte
        raise ExpressionError(f"not an arithmetic expression: {exc}") from None
    except (RecursionError, MemoryError):  # Python's parser on a long chain of unary operators or brackets
        raise ExpressionTooCostly("the expression is nested too deeply for Python's parser") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ExpressionTooCostly(f"the expression has {len(nodes)} parts, more than the {MAX_NODES} allowed")
    if _depth(tree) > MAX_DEPTH:
        raise ExpressionTooCostly(f"the expression is nested more than {MAX_DEPTH} levels deep")
    for node in nodes:
        if not isinstance(node, _ALLOWED):
            raise ExpressionError(f"{type(node).__name__} is not allowed (only arithmetic, names and {', '.join(_FUNCTIONS)})")
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool) or not isinstance(node.value, (int, float))):
            raise ExpressionError(f"only numbers are allowed as constants, got {node.value!r}")
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and not node.keywords):
                raise ExpressionError(f"only the functions {', '.join(_FUNCTIONS)} may be called")
            _, fewest, most = _FUNCTIONS[node.func.id]
            if not fewest <= len(node.args) <= most:
                count = f"{fewest}" if fewest == most else f"{fewest} to {most}"
                raise ExpressionError(f"{node.func.id}() takes {count} argument(s), got {len(node.args)}")
            if any(isinstance(arg, ast.Starred) for arg in node.args):
                raise ExpressionError("`*` arguments are not allowed")
    return tree


def names_in(tree: ast.Expression) -> set[str]:
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - called


def _bounded(value: float) -> float:
    if not math.isfinite(value):
        raise ExpressionTooCostly("a value it computes is not finite")
    if abs(value) > MAX_MAGNITUDE:
        raise ExpressionTooCostly(f"a value it computes ({value:.3g}) is beyond ±{MAX_MAGNITUDE:g}")
    return value


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpressionError(f"{value!r} is not a number")
    try:
        return _bounded(float(value))
    except OverflowError:
        raise ExpressionTooCostly("a number in it is too large") from None


def evaluate(tree: ast.Expression, values: dict[str, float]) -> float:
    """The expression's value over `values`; every value is a float, checked after each operation. The tree
    is at most MAX_DEPTH deep (parse_expression), so the recursion here is bounded."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return _number(node.value)
        if isinstance(node, ast.Name):
            return _number(values[node.id])
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and left != 0 and abs(right) * math.log10(max(abs(left), 1e-300)) > 100:
                raise ExpressionTooCostly(f"{left:.6g} ** {right:.6g} is beyond ±{MAX_MAGNITUDE:g}")
            result = _BINARY[type(node.op)](left, right)
            if isinstance(result, complex):  # a negative number to a fractional power
                raise ExpressionError(f"{left:.6g} ** {right:.6g} is not a real number")
            return _bounded(float(result))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.Call):
            function = _FUNCTIONS[node.func.id][0]
            return _bounded(float(function(*(walk(a) for a in node.args))))
        raise ExpressionError(f"cannot evaluate {type(node).__name__}")

    try:
        return walk(tree)
    except KeyError as exc:
        raise ExpressionError(f"unknown name {exc.args[0]!r}") from None
    except (ZeroDivisionError, ValueError, TypeError) as exc:
        if isinstance(exc, ExpressionError):
            raise
        raise ExpressionError(str(exc)) from None
    except OverflowError:
        raise ExpressionTooCostly(f"a value it computes is beyond ±{MAX_MAGNITUDE:g}") from None
    except RecursionError:
        raise ExpressionTooCostly("the expression is nested too deeply") from None
