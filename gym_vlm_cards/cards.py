"""Playing cards as short codes: a suit letter (H, S, D, C) followed by a rank (A, 2-9, T, J, Q, K).

The codes are the ones the reference gym_cards uses for its card pictures ("H5", "SK", "DT"), so the
symbolic state in ``info`` and the ``reset(options=...)`` of every task speak the same language.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUITS: tuple[str, ...] = ("H", "S", "D", "C")
RANKS: tuple[str, ...] = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "T", "J", "Q", "K")
RED_SUITS = frozenset({"H", "D"})
SUIT_SYMBOLS = {"H": "\u2665", "S": "\u2660", "D": "\u2666", "C": "\u2663"}
SUIT_NAMES = {"H": "hearts", "S": "spades", "D": "diamonds", "C": "clubs"}
RANK_NAMES = {"A": "ace", "T": "10", "J": "jack", "Q": "queen", "K": "king"}


@dataclass(frozen=True)
class Card:
    """One playing card, e.g. ``Card("H", "K")`` is the king of hearts."""

    suit: str
    rank: str

    @classmethod
    def parse(cls, code: object) -> Card:
        """Reads a code such as ``"H5"`` or ``"st"`` (case-insensitive); raises ValueError otherwise."""
        if not isinstance(code, str) or len(code.strip()) != 2:
            raise ValueError(
                f"card code {code!r} is not a suit letter (H/S/D/C) followed by a rank (A,2-9,T,J,Q,K)"
            )
        suit, rank = code.strip().upper()
        if suit not in SUITS:
            raise ValueError(f"card code {code!r}: suit {suit!r} is not one of H, S, D, C")
        if rank not in RANKS:
            raise ValueError(f"card code {code!r}: rank {rank!r} is not one of A, 2-9, T, J, Q, K")
        return cls(suit, rank)

    @property
    def code(self) -> str:
        return self.suit + self.rank

    @property
    def rank_number(self) -> int:
        """1 for an ace, 2-10 for number cards, 11-13 for J, Q, K."""
        return RANKS.index(self.rank) + 1

    def value(self, face_cards_as_ten: bool = True) -> int:
        """The card's number in the arithmetic tasks: A=1, J/Q/K=10 (or 11-13)."""
        number = self.rank_number
        return min(number, 10) if face_cards_as_ten else number

    @property
    def is_red(self) -> bool:
        return self.suit in RED_SUITS

    @property
    def label(self) -> str:
        """The rank as printed on the card face ("10" rather than "T")."""
        return "10" if self.rank == "T" else self.rank

    def describe(self) -> str:
        """``"king of hearts"``."""
        return f"{RANK_NAMES.get(self.rank, self.rank)} of {SUIT_NAMES[self.suit]}"

    def __str__(self) -> str:
        return self.code


FULL_DECK: tuple[Card, ...] = tuple(Card(s, r) for s in SUITS for r in RANKS)


def parse_cards(codes: object, count: int | None = None, what: str = "cards", distinct: bool = False) -> list[Card]:
    """Reads a list of card codes, checking the count when one is given.

    The same card may appear twice, as the reference tasks deal each card independently (EZPoints can
    deal ``["H6", "H6"]``); ``distinct=True`` refuses that, for a deal from one deck.
    """
    if isinstance(codes, str) or not isinstance(codes, (list, tuple)):
        raise ValueError(f"{what} must be a list of card codes such as ['H5', 'S7'], got {codes!r}")
    cards = [Card.parse(c) for c in codes]
    if distinct and len(set(cards)) != len(cards):
        raise ValueError(f"{what} hold the same card twice, which a single deck cannot deal: {list(codes)!r}")
    if count is not None and len(cards) != count:
        raise ValueError(f"{what} must hold exactly {count} cards, got {len(cards)}: {list(codes)!r}")
    return cards


def random_suit(np_random: np.random.Generator) -> str:
    return SUITS[int(np_random.integers(len(SUITS)))]


def card_with_rank(rank_number: int, np_random: np.random.Generator) -> Card:
    """A card of the given rank (1-13) and a random suit."""
    return Card(random_suit(np_random), RANKS[rank_number - 1])


def independent_cards(np_random: np.random.Generator, count: int, max_rank: int = 13) -> list[Card]:
    """``count`` cards drawn independently, as the reference deals: every rank in 1..``max_rank`` equally
    likely, then every suit, so a hand can hold the same card twice."""
    ranks = [int(np_random.integers(1, max_rank + 1)) for _ in range(count)]
    return [card_with_rank(rank, np_random) for rank in ranks]


def deal(np_random: np.random.Generator, count: int) -> list[Card]:
    """``count`` distinct cards from one shuffled 52-card deck."""
    picks = np_random.choice(len(FULL_DECK), size=count, replace=False)
    return [FULL_DECK[int(i)] for i in picks]
