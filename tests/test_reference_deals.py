"""The v0 card tasks against a model of the reference's rules (RL4VLM gym-cards), written from its
description: the deals it can make, how often it makes each, and the rewards of its steps.

The model keeps two changes every v0 task documents: formulas are evaluated exactly (the reference
uses floats, where ``8/(3-8/3)`` misses 24), and the traces play only numbers in hand (the reference
writes a blank for any other, our tasks write nothing; both cost -1, tested elsewhere). Numbers
written side by side join into one, as the reference's string evaluation joins them.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction

import gymnasium as gym
import numpy as np
import pytest

from gym_vlm_cards.solver import solve

SUITS = "HSDC"
RANK_CODES = {1: "A", 10: "T", 11: "J", 12: "Q", 13: "K"}
RANK_OF_CODE = {letter: rank for rank, letter in RANK_CODES.items()}


def code(rank: int, suit: str) -> str:
    return suit + RANK_CODES.get(rank, str(rank))


def rank_of(card: str) -> int:
    return RANK_OF_CODE.get(card[1:]) or int(card[1:])


# ---------------------------------------------------------------- the reference's deals
def reference_ezpoints_deal(rng: np.random.Generator) -> list[str]:
    """First rank uniform in 2..13, face cards worth 10; the value completing 12 by "*" half the time
    when it divides 12, else by "+"; each card an independent suit; then the order swapped by a coin."""
    first_rank = int(rng.integers(2, 14))
    value = min(first_rank, 10)
    if value in (1, 2, 3, 4, 6) and rng.random() <= 0.5:
        second = 12 // value
    else:
        second = 12 - value
    cards = [code(first_rank, SUITS[rng.integers(4)]), code(second, SUITS[rng.integers(4)])]
    return cards[::-1] if rng.random() <= 0.5 else cards


def reference_points24_deal(rng: np.random.Generator) -> list[str]:
    """Four independent ranks in 1..13, then four independent suits."""
    ranks = [int(rng.integers(1, 14)) for _ in range(4)]
    return [code(r, SUITS[rng.integers(4)]) for r in ranks]


TASKS = {
    "gym_cards/EZPoints-v0": (reference_ezpoints_deal, 12, 5, ("+", "*")),
    "gym_cards/Points24-v0": (reference_points24_deal, 24, 20, ("+", "-", "*", "/", "(", ")")),
}


# ---------------------------------------------------------------- the reference's steps
def evaluate_joined(tokens: list[str]) -> Fraction | None:
    """The value of the tokens written one after another (so "5", "7" reads 57), exactly; None when
    the text is not a formula or divides by zero."""
    text = "".join(tokens)
    parts = re.findall(r"\d+|[-+*/()]|\S", text)
    position = 0

    def peek():
        return parts[position] if position < len(parts) else None

    def take():
        nonlocal position
        position += 1
        return parts[position - 1]

    def atom():
        token = take() if peek() is not None else None
        if token is None:
            raise ValueError
        if token in "+-" and token:
            value = atom()
            return value if token == "+" else -value
        if token == "(":
            value = expression()
            if peek() != ")":
                raise ValueError
            take()
            return value
        if token.isdigit():
            return Fraction(int(token))
        raise ValueError

    def term():
        value = atom()
        while peek() in ("*", "/"):
            if take() == "*":
                value *= atom()
            else:
                value /= atom()
        return value

    def expression():
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    try:
        value = expression()
    except (ValueError, ZeroDivisionError):
        return None
    return value if position == len(parts) else None


class ReferenceRules:
    """One episode under the reference's rules for a given hand."""

    def __init__(self, cards: list[str], target: int, limit: int) -> None:
        self.numbers = [min(rank_of(c), 10) for c in cards]
        self.target, self.limit = target, limit
        self.formula: list[str] = []
        self.used: list[int] = []

    def step(self, token: str) -> tuple[float, bool, bool]:
        if len(self.formula) > self.limit:
            return -1.0, False, True
        if token.isdigit():
            if (self.used + [int(token)]).count(int(token)) > self.numbers.count(int(token)):
                self.formula.append(" ")
                return -1.0, False, False
            self.used.append(int(token))
        if token == "=":
            won = evaluate_joined(self.formula) == self.target and len(self.used) == len(self.numbers)
            return (10.0 if won else -1.0), True, False
        self.formula.append(token)
        return 0.0, False, False


def make_traces(count: int, seed: int = 0) -> list[tuple[str, list[str], list[str]]]:
    """``count`` traces (task id, hand, tokens): reference deals, played half the time by a solution and
    otherwise by random tokens (numbers in hand and operators), some ending in "=" and some running
    past the formula limit."""
    rng = np.random.default_rng(seed)
    traces = []
    for index in range(count):
        env_id = list(TASKS)[index % 2]
        deal, target, limit, operators = TASKS[env_id]
        cards = deal(rng)
        numbers = [min(rank_of(c), 10) for c in cards]
        solution = solve(numbers, target, "".join(o for o in operators if o in "+-*/"))
        if solution is not None and rng.random() < 0.5:
            tokens = list(solution) + ["="]
        else:
            left = list(numbers)
            tokens = []
            for _ in range(int(rng.integers(1, limit + 4))):
                choices = [str(n) for n in sorted(set(left))] + list(operators)
                token = choices[int(rng.integers(len(choices)))]
                if token.isdigit():
                    left.remove(int(token))
                tokens.append(token)
            if rng.random() < 0.7:
                tokens.append("=")
        traces.append((env_id, cards, tokens))
    return traces


def test_the_v0_card_tasks_replay_623_reference_traces_duplicates_included():
    traces = make_traces(623)
    duplicates = sum(len(set(cards)) < len(cards) for _, cards, _ in traces)
    assert duplicates >= 20  # hands holding the same card twice are part of the set
    envs = {env_id: gym.make(env_id, action_mode="discrete") for env_id in TASKS}
    agreed = 0
    for env_id, cards, tokens in traces:
        env = envs[env_id]
        _, target, limit, _ = TASKS[env_id]
        reference = ReferenceRules(cards, target, limit)
        _, info = env.reset(options={"cards": cards})
        same = info["Cards"] == cards
        for token in tokens:
            expected = reference.step(token)
            _, reward, terminated, truncated, _ = env.step(env.unwrapped.legal_action_index(token))
            same = same and (reward, terminated, truncated) == expected
            if terminated or truncated:
                break
        agreed += same
    assert agreed == len(traces) == 623


@pytest.mark.parametrize("env_id", list(TASKS))
def test_the_v0_deal_distribution_is_the_reference_procedures(env_id):
    deal = TASKS[env_id][0]
    rng = np.random.default_rng(1)
    reference = [deal(rng) for _ in range(10_000)]
    env = gym.make(env_id).unwrapped
    env.reset(seed=2)
    ours = [[c.code for c in env._deal()] for _ in range(10_000)]

    def chi_square(a: list, b: list) -> tuple[float, int]:
        keys = sorted(set(a) | set(b))
        statistic = 0.0
        for key in keys:
            x, y = a.count(key), b.count(key)
            statistic += (x - y) ** 2 / (x + y)  # two equal-sized samples
        return statistic, len(keys) - 1

    for position in range(len(reference[0])):
        for feature in (lambda c: c[1:], lambda c: c[0]):  # rank, then suit
            statistic, df = chi_square([feature(h[position]) for h in reference], [feature(h[position]) for h in ours])
            assert statistic < df + 6 * math.sqrt(2 * df), (position, statistic, df)
    ref_rate = np.mean([len(set(h)) < len(h) for h in reference])
    our_rate = np.mean([len(set(h)) < len(h) for h in ours])
    spread = math.sqrt(2 * ref_rate * (1 - ref_rate) / 10_000)
    assert ref_rate > 0.005 and abs(our_rate - ref_rate) < 5 * spread, (ref_rate, our_rate)


@pytest.mark.parametrize("target", range(3, 21))
def test_ezpoints_targets_in_3_to_20_deal_only_completable_hands(target):
    env = gym.make("gym_cards/EZPoints-v0", target=target)
    for seed in range(40):
        _, info = env.reset(seed=seed)
        a, b = info["Numbers"]
        assert a + b == target or a * b == target
        assert f"whose value is {target}," in info["prompt"] and f"whose value is {target}," in info["action_only_prompt"]
    rewards = [env.step(json.dumps({"action": t}))[1] for t in env.unwrapped.solution() + ["="]]
    assert rewards[-1] == 10.0


@pytest.mark.parametrize("target", [1, 23, 97, 12.5, True, "12"])
def test_ezpoints_refuses_targets_no_two_cards_make(target):
    with pytest.raises(ValueError, match="target"):
        gym.make("gym_cards/EZPoints-v0", target=target)


def test_ezpoints_products_beyond_twenty_are_dealt():
    env = gym.make("gym_cards/EZPoints-v0", target=30)
    hands = {tuple(sorted(env.reset(seed=s)[1]["Numbers"])) for s in range(40)}
    assert hands == {(3, 10), (5, 6)}
