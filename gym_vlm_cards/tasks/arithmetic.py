"""Rules shared by EZPoints and Points24: build a formula from the cards, one token per action."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gym_vlm_cards.cards import Card, parse_cards
from gym_vlm_cards.formula import try_evaluate
from gym_vlm_cards.rendering import TABLE_GREEN, WHITE, Canvas, line_height, wrap_text
from gym_vlm_cards.solver import solve
from gym_vlm_cards.text_env import Outcome, TextActionEnv, require_bool, require_int

#: Reward for "=" on a correct formula that uses every card.
WIN_REWARD = 10.0


class ArithmeticCardsEnv(TextActionEnv):
    """Cards on a table; the agent writes a formula with their numbers that equals ``target``.

    Number actions play a card's number (each card once; a number not in hand costs -1 and is not
    written), operator and parenthesis actions are written as they are, and "=" ends the episode:
    +10 when the formula is well formed, uses every card and equals the target exactly, else -1. If
    the formula already holds more than ``formula_limit`` tokens, the step is truncated with -1.
    Subclasses set the card count, operators and the deal.
    """

    background = TABLE_GREEN
    deterministic_steps = True  # the deal is drawn at reset; every step after it is determined
    n_cards: int = 2
    operators: tuple[str, ...] = ("+", "*")
    #: Whether a hand is dealt from one deck (so no card twice); the reference deals cards independently.
    distinct_cards: bool = False

    def __init__(
        self,
        target: int,
        formula_limit: int,
        face_cards_as_ten: bool = True,
        **kwargs: Any,
    ) -> None:
        self.target = require_int("target", target, minimum=1)
        self.formula_limit = require_int("formula_limit", formula_limit, minimum=1)
        self.face_cards_as_ten = require_bool("face_cards_as_ten", face_cards_as_ten)
        self.max_number = 10 if self.face_cards_as_ten else 13
        numbers = tuple(str(n) for n in range(1, self.max_number + 1))
        super().__init__(numbers + self.operators + ("=",), **kwargs)
        self.cards: list[Card] = []
        self.formula: list[str] = []
        self.used: list[int] = []

    # ------------------------------------------------------------------ episode
    def _deal(self) -> list[Card]:
        raise NotImplementedError

    def _start_episode(self, options: dict[str, Any] | None) -> None:
        if options is not None:
            unknown = set(options) - {"cards"}
            if unknown or "cards" not in options:
                raise ValueError(f"{type(self).__name__} options take exactly 'cards', got {sorted(options)}")
            self.cards = parse_cards(options["cards"], self.n_cards, distinct=self.distinct_cards)
        else:
            self.cards = self._deal()
        self.formula = []
        self.used = []

    @property
    def numbers(self) -> list[int]:
        return [card.value(self.face_cards_as_ten) for card in self.cards]

    def _available(self, number: int) -> bool:
        return self.used.count(number) < self.numbers.count(number)

    def _apply(self, action: str) -> Outcome:
        if len(self.formula) > self.formula_limit:
            return Outcome(-1.0, truncated=True)
        if action == "=":
            value = try_evaluate(self.formula)
            won = value is not None and value == self.target and len(self.used) == self.n_cards
            return Outcome(WIN_REWARD if won else -1.0, terminated=True, success=won)
        if action.isdigit():
            number = int(action)
            if not self._available(number):
                return Outcome(-1.0)
            self.used.append(number)
        self.formula.append(action)
        return Outcome(0.0)

    # ------------------------------------------------------------------ views
    def _draw(self, canvas: Canvas) -> None:
        w, h = canvas.width, canvas.height
        margin = max(1, w // 60)
        # The formula comes first: it must stay inside the frame at any size, or an agent cannot see
        # what it has written (measured: at 64 px it used to fall off the bottom edge). Long formulas
        # wrap onto a second line, in smaller type if need be.
        formula = "Formula: " + " ".join(self.formula)
        size = max(7, h // 14)
        lines = wrap_text(formula, size, w - 2 * margin)
        while len(lines) > 2 and size > 6:
            size -= 1
            lines = wrap_text(formula, size, w - 2 * margin)
        step = line_height(size)
        formula_y = h - step * len(lines) - margin
        for i, line in enumerate(lines):
            canvas.text(line, margin, formula_y + i * step, size, WHITE)
        slot = w / self.n_cards
        card_w = int(slot * 0.9)
        # A wide, short frame leaves little height above the formula: the cards shrink to fit it.
        card_h = int(card_w * 7 / 5)
        if card_h > formula_y - 2 * margin:
            card_h = max(1, formula_y - 2 * margin)
            card_w = max(1, min(card_w, int(card_h * 5 / 7)))
        top = max(margin, (formula_y - card_h) // 2)
        for i, card in enumerate(self.cards):
            canvas.card(card.code, int(i * slot + (slot - card_w) / 2), top, card_w, card_h)

    def symbolic_state(self) -> dict[str, Any]:
        return {
            "Cards": [c.code for c in self.cards],
            "Numbers": self.numbers,
            "Formula": list(self.formula),
            "solvable": self.solvable,
        }

    def describe_state(self) -> str:
        cards = ", ".join(c.describe() for c in self.cards)
        formula = " ".join(self.formula) if self.formula else "(empty)"
        return f"The cards are {cards}, worth {self.numbers}. The formula so far is {formula}."

    def action_mask(self) -> np.ndarray:
        mask = np.ones(len(self.legal_actions), dtype=bool)
        for index, action in enumerate(self.legal_actions):
            if action.isdigit():
                mask[index] = self._available(int(action))
        return mask

    # ------------------------------------------------------------------ oracle
    def solution(self) -> list[str] | None:
        """A winning formula for the cards dealt, or None when there is none."""
        return solve(self.numbers, self.target, "".join(op for op in self.operators if op in "+-*/"))

    @property
    def solvable(self) -> bool:
        return self.solution() is not None

    def oracle_action(self) -> str:
        solution = self.solution()
        if solution is None or self.formula != solution[: len(self.formula)]:
            return "="  # nothing left to win: end the episode at once
        if len(self.formula) == len(solution):
            return "="
        return solution[len(self.formula)]

    def oracle_thoughts(self) -> dict[str, Any]:
        solution = self.solution()
        if solution is None:
            thoughts = f"No formula with these numbers makes {self.target}, so I end the game."
        else:
            thoughts = f"{' '.join(solution)} = {self.target}, so the next token is {self.oracle_action()}."
        return {"cards": self.numbers, "formula": " ".join(self.formula), "thoughts": thoughts}


def arithmetic_prompt(
    target: int, n_cards: int, actions: Sequence[str], chain_of_thought: bool, face_cards_as_ten: bool = True
) -> str:
    """The prompt of a card arithmetic task, with or without chain-of-thought."""
    numbers = [a for a in actions if a.isdigit()]
    symbols = [a for a in actions if not a.isdigit()]
    faces = "count as 10" if face_cards_as_ten else "count as 11, 12 and 13"
    rules = (
        f"You are playing a card game. The image shows {n_cards} cards. Build a formula whose value is "
        f"{target}, using the number of every card exactly once; aces count as 1 and jacks, queens and kings "
        f"{faces}. Each turn you add one token to the formula: a number from {numbers[0]} to {numbers[-1]} "
        f"or one of {' '.join(repr(s) for s in symbols if s != '=')}. Choose '=' when the formula is complete. "
    )
    if chain_of_thought:
        return rules + (
            'Reply with a JSON object in exactly this format: {"cards": [x, y, ...], "formula": "the formula so '
            'far", "thoughts": "find a formula that reaches the target, then pick its next token", "action": '
            '"the next token"}'
        )
    return rules + 'Reply with a JSON object in exactly this format: {"action": "the next token"}'
