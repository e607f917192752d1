from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gym_vlm_cards.formula import FormulaError, evaluate, tokenize, try_evaluate
from gym_vlm_cards.solver import to_tokens


@pytest.mark.parametrize(
    "text, value",
    [
        ("8/(3-8/3)", Fraction(24)),
        ("5+7", Fraction(12)),
        ("3*4", Fraction(12)),
        ("2+3*4", Fraction(14)),
        ("(2+3)*4", Fraction(20)),
        ("10-2-3", Fraction(5)),
        ("8/2/2", Fraction(2)),
        ("1/3+1/3+1/3", Fraction(1)),
        ("((6))", Fraction(6)),
    ],
)
def test_evaluates_exactly(text, value):
    assert evaluate(tokenize(text)) == value


@pytest.mark.parametrize(
    "tokens",
    [[], ["1", "2"], ["+"], ["1", "+"], ["(", "1"], ["1", ")"], ["-", "3"], ["5", "/", "0"], ["4", "/", "(", "2", "-", "2", ")"], ["(", ")"], ["*", "3"]],
)
def test_malformed_formulas_and_division_by_zero_give_none(tokens):
    assert try_evaluate(tokens) is None
    with pytest.raises(FormulaError):
        evaluate(tokens)


def test_numbers_are_atoms_not_digits():
    assert try_evaluate(["1", "2"]) is None  # not twelve
    assert evaluate(["12"]) == 12  # one token is one number


def _trees(depth: int):
    leaf = st.integers(1, 13)
    return st.recursive(leaf, lambda inner: st.tuples(st.sampled_from("+-*/"), inner, inner), max_leaves=6)


def _value(tree):
    if isinstance(tree, int):
        return Fraction(tree)
    op, a, b = tree
    a, b = _value(a), _value(b)
    if op == "/" and b == 0:
        return None
    if a is None or b is None:
        return None
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]


@settings(max_examples=400, deadline=None)
@given(_trees(4))
def test_minimal_parentheses_preserve_the_value(tree):
    expected = _value(tree)
    assert try_evaluate(to_tokens(tree)) == expected
