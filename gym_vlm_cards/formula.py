"""Exact evaluation of the arithmetic formulas the card tasks build, one token per action.

A formula is a list of tokens: numbers ("1".."13"), operators ("+", "-", "*", "/") and parentheses.
Numbers are atoms: two numbers in a row do not make "12", they make a malformed formula. Arithmetic
is done with :class:`fractions.Fraction`, so ``8 / (3 - 8 / 3)`` is exactly 24. Nothing is ever
passed to Python's ``eval``.

Grammar (standard precedence, left-associative, no unary minus)::

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := NUMBER | "(" expr ")"
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

OPERATORS = frozenset("+-*/")


class FormulaError(ValueError):
    """The formula is malformed or divides by zero."""


class _Parser:
    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = list(tokens)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise FormulaError("the formula ends too early")
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            right = self.term()
            value = value + right if op == "+" else value - right
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            right = self.factor()
            if op == "*":
                value = value * right
            elif right == 0:
                raise FormulaError("division by zero")
            else:
                value = value / right
        return value

    def factor(self) -> Fraction:
        token = self.take()
        if token == "(":
            value = self.expr()
            if self.take() != ")":
                raise FormulaError("a '(' is not closed")
            return value
        if token.isdigit():
            return Fraction(int(token))
        raise FormulaError(f"expected a number or '(', found {token!r}")


def evaluate(tokens: Sequence[str]) -> Fraction:
    """The exact value of a token list; raises :class:`FormulaError` when it is malformed."""
    if len(tokens) == 0:
        raise FormulaError("the formula is empty")
    parser = _Parser(tokens)
    value = parser.expr()
    if parser.pos != len(parser.tokens):
        raise FormulaError(f"unexpected {parser.tokens[parser.pos]!r} at position {parser.pos}")
    return value


def try_evaluate(tokens: Sequence[str]) -> Fraction | None:
    """Like :func:`evaluate`, but None for a malformed formula or a division by zero."""
    try:
        return evaluate(tokens)
    except FormulaError:
        return None


def tokenize(text: str) -> list[str]:
    """Splits ``"8/(3-8/3)"`` into tokens; multi-digit numbers stay one token. For tests and oracles."""
    tokens: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch.isdigit():
            j = i
            while j < len(text) and text[j].isdigit():
                j += 1
            tokens.append(text[i:j])
            i = j
        elif ch in "+-*/()":
            tokens.append(ch)
            i += 1
        else:
            raise FormulaError(f"unexpected character {ch!r}")
    return tokens
