"""Points24: the 24 game with four cards, parentheses and the four operations."""

from __future__ import annotations

from typing import Any

from gym_vlm_cards.cards import Card, deal, independent_cards
from gym_vlm_cards.tasks.arithmetic import ArithmeticCardsEnv, arithmetic_prompt

_OPERATORS = ("+", "-", "*", "/", "(", ")")
#: How the four cards are dealt: independently, as the reference does, or from one deck.
DECKS = ("independent", "single")


class Points24Env(ArithmeticCardsEnv):
    """Write a formula with four cards that equals 24.

    ## Description
    Four cards are dealt as the reference deals them: each rank (A..K) and suit drawn independently,
    so a hand can hold the same card twice (``deck="single"`` deals four distinct cards from one
    shuffled deck instead). Exactly 73.1% of the reference's hands can be solved (20,876 of the 28,561
    equally likely rank tuples), 74.6% of one deck's. Their numbers (A=1, J/Q/K=10, or 11-13 with
    ``face_cards_as_ten=False``) must make 24 with "+", "-", "*", "/" and parentheses, each card used
    once. Not every deal can be solved: ``info["solvable"]`` says whether this one can (an exhaustive
    search with exact fractions, so ``8 / (3 - 8 / 3)`` counts).

    ## Action Space
    Text, or ``Discrete(17)`` in the reference's order: "1".."10", "+", "-", "*", "/", "(", ")", "="
    (``Discrete(20)`` with numbers up to "13" when ``face_cards_as_ten=False``).

    ## Observation Space
    ``Box(0, 255, (300, 300, 3), uint8)``: four cards and "Formula: ..." on a green table.

    ## Rewards
    A card number not in hand (or already used): -1, not written. "=": +10 if the formula equals 24
    exactly and uses all four cards, else -1 (a malformed formula or a division by zero gives -1
    too). An unreadable answer: -1 (``invalid_action="penalize"``).

    ## Episode End
    Terminated on "="; truncated with -1 when the formula already holds more than 20 tokens (and, as
    a safety net, after 84 steps).

    ## Information
    The state under "Cards", "Numbers", "Formula" and "solvable" (new); the keys every task shares
    are listed in :class:`TextActionEnv`.

    ## Version History
    * v0: the reference's id, rules and rewards, with the changes every task makes (see
      :class:`TextActionEnv`); registered step limit 84 (a safety net the reference
      lacks); formulas are evaluated exactly, never with ``eval``; the deal is the reference's (four
      independent cards, duplicates included); a number not in hand is not written (the reference
      writes a blank that counts toward the formula limit).

    ## Arguments
    ``target`` (24), ``formula_limit`` (20), ``face_cards_as_ten`` (True), ``deck`` (``"independent"``, the
    reference's deal, or ``"single"``: one deck, no card twice), plus the
    :class:`TextActionEnv` arguments. ``reset(options={"cards": ["H5", "S7", "DT", "CA"]})`` deals given
    cards. ``info`` holds "Cards", "Numbers", "Formula" and "solvable".
    """

    n_cards = 4
    operators = _OPERATORS

    def __init__(
        self,
        target: int = 24,
        formula_limit: int = 20,
        face_cards_as_ten: bool = True,
        deck: str = "independent",
        **kwargs: Any,
    ) -> None:
        if deck not in DECKS:
            raise ValueError(f"deck must be one of {DECKS}, got {deck!r}")
        self.deck = deck
        super().__init__(target=target, formula_limit=formula_limit, face_cards_as_ten=face_cards_as_ten, **kwargs)
        self.prompt = arithmetic_prompt(self.target, 4, self.legal_actions, True, self.face_cards_as_ten)
        self.action_only_prompt = arithmetic_prompt(self.target, 4, self.legal_actions, False, self.face_cards_as_ten)

    @property
    def distinct_cards(self) -> bool:  # one deck holds each card once
        return self.deck == "single"

    def _deal(self) -> list[Card]:
        if self.deck == "single":
            return deal(self.np_random, self.n_cards)
        return independent_cards(self.np_random, self.n_cards)
