"""Exhaustive, exact solver for the card arithmetic games (EZPoints, Points24).

Every way of combining the cards with the allowed operators is tried, with exact rational arithmetic,
so the answer "solvable or not" is a proof, not a float approximation. Solutions come back as token
lists with only the parentheses that precedence needs, ready to be played action by action.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Union

Expr = Union[int, tuple[str, "Expr", "Expr"]]  # noqa: UP007 (a recursive alias needs Union on 3.10)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def solve(numbers: Sequence[int], target: int, operators: str = "+-*/") -> list[str] | None:
    """Tokens of a formula that uses every number once and equals ``target``, or None."""
    expr = _solve_cached(tuple(sorted(numbers)), int(target), operators)
    return None if expr is None else to_tokens(expr)


def is_solvable(numbers: Sequence[int], target: int, operators: str = "+-*/") -> bool:
    return _solve_cached(tuple(sorted(numbers)), int(target), operators) is not None


@lru_cache(maxsize=4096)
def _solve_cached(numbers: tuple[int, ...], target: int, operators: str) -> Expr | None:
    items = [(Fraction(n), n) for n in numbers]
    return _search(items, Fraction(target), operators, set())


def _search(items: list[tuple[Fraction, Expr]], target: Fraction, operators: str, dead: set) -> Expr | None:
    if len(items) == 1:
        return items[0][1] if items[0][0] == target else None
    # Multisets of values already shown unsolvable; the expressions do not matter for that.
    key = tuple(sorted(value for value, _ in items))
    if key in dead:
        return None
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = [items[k] for k in range(len(items)) if k != i and k != j]
            (a, ea), (b, eb) = items[i], items[j]
            for value, expr in _combinations(a, ea, b, eb, operators):
                found = _search(rest + [(value, expr)], target, operators, dead)
                if found is not None:
                    return found
    dead.add(key)
    return None


def _combinations(a: Fraction, ea: Expr, b: Fraction, eb: Expr, operators: str):
    if "+" in operators:
        yield a + b, ("+", ea, eb)
    if "*" in operators:
        yield a * b, ("*", ea, eb)
    if "-" in operators:
        yield a - b, ("-", ea, eb)
        yield b - a, ("-", eb, ea)
    if "/" in operators:
        if b != 0:
            yield a / b, ("/", ea, eb)
        if a != 0:
            yield b / a, ("/", eb, ea)


def to_tokens(expr: Expr, parent_precedence: int = 0, right_of_inverse: bool = False) -> list[str]:
    """Writes an expression tree as tokens, adding parentheses only where precedence needs them."""
    if isinstance(expr, int):
        return [str(expr)]
    op, left, right = expr
    precedence = _PRECEDENCE[op]
    tokens = to_tokens(left, precedence) + [op] + to_tokens(right, precedence, op in "-/")
    needs_parentheses = precedence < parent_precedence or (precedence == parent_precedence and right_of_inverse)
    return ["(", *tokens, ")"] if needs_parentheses else tokens
