"""Safe arithmetic for derived parameters (`stage3 = 1 - stage1 - stage2`): a tiny AST evaluator.

Only numbers, parameter names, + - * / // % **, unary minus, and min/max/abs/round are allowed, so a
study file can never run code.
"""

from __future__ import annotations

import ast
import math
import operator

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS = {"min": min, "max": max, "abs": abs, "round": round, "sqrt": math.sqrt, "log": math.log, "exp": math.exp}


class ExpressionError(ValueError):
    pass


def parse_expression(text: str) -> ast.Expression:
    try:
        tree = ast.parse(str(text), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not an arithmetic expression: {exc.msg}") from None
    for node in ast.walk(tree):
        allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Constant, ast.Call,
                   *_BINARY, *_UNARY)
        if not isinstance(node, allowed):
            raise ExpressionError(f"{type(node).__name__} is not allowed (only arithmetic, names and {', '.join(_FUNCTIONS)})")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise ExpressionError(f"only numbers are allowed as constants, got {node.value!r}")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and not node.keywords):
            raise ExpressionError(f"only the functions {', '.join(_FUNCTIONS)} may be called")
    return tree


def names_in(tree: ast.Expression) -> set[str]:
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - called


def evaluate(tree: ast.Expression, values: dict[str, float]) -> float:
    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.Call):
            return _FUNCTIONS[node.func.id](*(walk(a) for a in node.args))
        raise ExpressionError(f"cannot evaluate {type(node).__name__}")

    try:
        return walk(tree)
    except (ZeroDivisionError, OverflowError, ValueError, TypeError) as exc:
        raise ExpressionError(str(exc)) from None
