"""EZPoints: two cards whose numbers make 12 with "+" or "*"."""

from __future__ import annotations

from typing import Any

from gym_vlm_cards.cards import RANKS, Card, card_with_rank, random_suit
from gym_vlm_cards.tasks.arithmetic import ArithmeticCardsEnv, arithmetic_prompt

_ACTIONS = tuple(str(n) for n in range(1, 11)) + ("+", "*", "=")


class EZPointsEnv(ArithmeticCardsEnv):
    """Write a formula with two cards that equals 12.

    ## Description
    Two cards are dealt so that their numbers (A=1, J/Q/K=10) make 12 by "+" or "*" (the reference
    deal: the first rank is uniform in 2..K; when its value divides 12, half the time the second card
    completes a product, else a sum; random suits and order).

    ## Action Space
    Text, or ``Discrete(13)`` in the reference's order: 0-9 = "1".."10", 10 = "+", 11 = "*", 12 = "=".

    ## Observation Space
    ``Box(0, 255, (300, 300, 3), uint8)``: the two cards and "Formula: ..." on a green table.

    ## Rewards
    A card number not in hand (or already used): -1, not written. "=": +10 if the formula equals 12
    exactly and uses both cards, else -1. An unreadable answer: -1 (``invalid_action="penalize"``).

    ## Episode End
    Terminated on "="; truncated with -1 when the formula already holds more than 5 tokens (and, as a
    safety net, after 24 steps).

    ## Information
    The state under "Cards", "Numbers" and "Formula"; the keys every task shares are listed in :class:`TextActionEnv`.

    ## Version History
    * v0: the reference's id, rules and rewards, with the changes every task makes (see
      :class:`TextActionEnv`); registered step limit 24 (a safety net the reference
      lacks); formulas are evaluated exactly, never with ``eval``.

    ## Arguments
    ``target`` (12), ``formula_limit`` (5), plus the :class:`TextActionEnv` arguments.
    ``reset(options={"cards": ["H5", "S7"]})`` deals given cards. ``info`` holds "Cards", "Numbers",
    "Formula" and "solvable".
    """

    n_cards = 2
    operators = ("+", "*")
    prompt = arithmetic_prompt(12, 2, _ACTIONS, chain_of_thought=True)
    action_only_prompt = arithmetic_prompt(12, 2, _ACTIONS, chain_of_thought=False)

    def __init__(self, target: int = 12, formula_limit: int = 5, **kwargs: Any) -> None:
        super().__init__(target=target, formula_limit=formula_limit, face_cards_as_ten=True, **kwargs)

    def _deal(self) -> list[Card]:
        first = card_with_rank(int(self.np_random.integers(2, 14)), self.np_random)
        value = first.value()
        if self.target % value == 0 and self.target // value <= 10 and self.np_random.random() < 0.5:
            second_value = self.target // value
        else:
            second_value = self.target - value
        if not 1 <= second_value <= 10:
            raise RuntimeError(f"no card completes {value} to {self.target}; pick a target in 3..20")
        second = Card(random_suit(self.np_random), RANKS[second_value - 1])
        while second == first:
            second = Card(random_suit(self.np_random), second.rank)
        cards = [first, second]
        if self.np_random.random() < 0.5:
            cards.reverse()
        return cards
