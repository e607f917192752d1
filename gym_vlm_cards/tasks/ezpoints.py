"""EZPoints: two cards whose numbers make 12 with "+" or "*"."""

from __future__ import annotations

from typing import Any

from gym_vlm_cards.cards import Card, card_with_rank
from gym_vlm_cards.tasks.arithmetic import ArithmeticCardsEnv, arithmetic_prompt

_ACTIONS = tuple(str(n) for n in range(1, 11)) + ("+", "*", "=")


class EZPointsEnv(ArithmeticCardsEnv):
    """Write a formula with two cards that equals 12.

    ## Description
    Two cards are dealt so that their numbers (A=1, J/Q/K=10) make 12 by "+" or "*", as the reference
    deals them: the first rank is uniform in 2..K; when its value divides 12, half the time the second
    card completes a product, else a sum; each card has an independent random suit (so the same card
    can be dealt twice), and a coin sets the order. Another ``target`` draws the first rank among
    those a second card can complete, and the prompt names that target.

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
      lacks); formulas are evaluated exactly, never with ``eval``; the deal is the reference's
      (independent suits, so ``["H6", "H6"]`` occurs); a number not in hand is not written (the
      reference writes a blank that counts toward the formula limit).

    ## Arguments
    ``target`` (12; any that two cards can make), ``formula_limit`` (5), plus the :class:`TextActionEnv` arguments.
    ``reset(options={"cards": ["H5", "S7"]})`` deals given cards. ``info`` holds "Cards", "Numbers",
    "Formula" and "solvable".
    """

    n_cards = 2
    operators = ("+", "*")

    def __init__(self, target: int = 12, formula_limit: int = 5, **kwargs: Any) -> None:
        super().__init__(target=target, formula_limit=formula_limit, face_cards_as_ten=True, **kwargs)
        # The first card's rank is drawn among those a second card can complete (for 12: all of 2..K).
        self._first_ranks = [r for r in range(2, 14) if _completions(self.target, min(r, 10))]
        if not self._first_ranks:
            raise ValueError(f"no two cards make target={self.target} with '+' or '*'; pick a target in 3..20 "
                             "or a product of two numbers in 1..10")
        self.prompt = arithmetic_prompt(self.target, 2, _ACTIONS, chain_of_thought=True)
        self.action_only_prompt = arithmetic_prompt(self.target, 2, _ACTIONS, chain_of_thought=False)

    def _deal(self) -> list[Card]:
        # The reference's procedure: a first rank, then the value completing it by "*" or "+" (a coin
        # when both can), each with an independent suit, so ["H6", "H6"] is a possible deal; then a
        # coin for the order.
        rank = self._first_ranks[int(self.np_random.integers(len(self._first_ranks)))]
        first = card_with_rank(rank, self.np_random)
        product, total = _completions(self.target, first.value())
        if product is not None and (total is None or self.np_random.random() < 0.5):
            second_value = product
        else:
            second_value = total
        cards = [first, card_with_rank(second_value, self.np_random)]
        if self.np_random.random() < 0.5:
            cards.reverse()
        return cards


def _completions(target: int, value: int) -> tuple[int | None, int | None] | None:
    """The card values completing ``value`` to ``target`` by "*" and by "+" (None where none does);
    None when neither can."""
    product = target // value if target % value == 0 and 1 <= target // value <= 10 else None
    total = target - value if 1 <= target - value <= 10 else None
    return None if product is None and total is None else (product, total)
