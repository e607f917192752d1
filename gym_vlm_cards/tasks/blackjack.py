"""Blackjack, with Gymnasium's rules, drawn as cards."""

from __future__ import annotations

from typing import Any

from gym_vlm_cards.cards import RANKS, Card, parse_cards, random_suit
from gym_vlm_cards.rendering import TABLE_GREEN, WHITE, Canvas
from gym_vlm_cards.text_env import Outcome, TextActionEnv, require_bool

BLACKJACK_PROMPT = (
    "You are playing blackjack against the dealer. The image shows the dealer's face-up card above and "
    "your cards below. Number cards count their number, jacks, queens and kings count 10, and an ace "
    "counts 11 unless that would take you over 21, then 1. You win by ending closer to 21 than the "
    "dealer without going over. Choose to hit (take another card) or stand (stop). Reply with a JSON "
    'object in exactly this format: {"thoughts": "add up your cards, look at the dealer\'s card, and '
    'decide", "action": "stand" or "hit"}'
)
BLACKJACK_ACTION_ONLY_PROMPT = (
    "You are playing blackjack against the dealer. The image shows the dealer's face-up card above and "
    "your cards below. Number cards count their number, jacks, queens and kings count 10, and an ace "
    "counts 11 unless that would take you over 21, then 1. You win by ending closer to 21 than the "
    "dealer without going over. Choose to hit (take another card) or stand (stop). Reply with a JSON "
    'object in exactly this format: {"action": "stand" or "hit"}'
)


def hand_total(cards: list[Card]) -> int:
    """The best total of a hand: one ace counts 11 when that does not bust it."""
    total = sum(card.value() for card in cards)
    if any(card.rank == "A" for card in cards) and total + 10 <= 21:
        return total + 10
    return total


def is_soft(cards: list[Card]) -> bool:
    """True when an ace is being counted as 11."""
    total = sum(card.value() for card in cards)
    return any(card.rank == "A" for card in cards) and total + 10 <= 21


def is_natural(cards: list[Card]) -> bool:
    return len(cards) == 2 and hand_total(cards) == 21


def basic_strategy(player: list[Card], dealer_up: Card) -> str:
    """Hit/stand basic strategy for an infinite deck, dealer standing on all 17s (no doubles/splits)."""
    total = hand_total(player)
    up = 11 if dealer_up.rank == "A" else dealer_up.value()
    if is_soft(player):
        if total >= 19:
            return "stand"
        if total == 18:
            return "stand" if up <= 8 else "hit"
        return "hit"
    if total >= 17:
        return "stand"
    if total >= 13:
        return "stand" if up <= 6 else "hit"
    if total == 12:
        return "stand" if 4 <= up <= 6 else "hit"
    return "hit"


class BlackjackEnv(TextActionEnv):
    """Beat the dealer at blackjack, reading the cards from the image.

    ## Description
    Gymnasium's Blackjack (Sutton & Barto, example 5.1): an infinite deck, the dealer shows one card
    and hides one, the player hits or stands, the dealer then draws until 17 or more.

    ## Action Space
    Text, or ``Discrete(2)`` in the reference's order: 0 = "stand", 1 = "hit".

    ## Observation Space
    ``Box(0, 255, (300, 300, 3), uint8)``: the dealer's face-up card beside a card back, and the
    player's cards, on a green table; when the episode ends the dealer's whole hand is shown.

    ## Rewards
    Win +1, lose -1, draw 0; with ``natural=True`` a winning natural pays +1.5; with ``sab=True`` a
    natural beats a dealer without one (+1). An unreadable answer: -1 (``invalid_action="penalize"``).

    ## Episode End
    Terminated when the player stands or busts (``info["is_success"]`` is a win); truncated only by
    the registered step limit (20, more than any hand can take).

    ## Information
    The state under "Dealer Card" and "Player Card"; the keys every task shares are listed in :class:`TextActionEnv`.

    ## Version History
    * v0: the reference's id, rules and rewards, with the changes every task makes (see
      :class:`TextActionEnv`); registered step limit 20; cards are drawn as cards, not the toy-text sprites.

    ## Arguments
    ``natural`` (False), ``sab`` (False), plus the :class:`TextActionEnv` arguments.
    ``reset(options={"player": ["HA", "S9"], "dealer": ["D5", "CK"]})`` deals given hands (the dealer's
    first card is the face-up one). ``info`` holds "Dealer Card" (the visible cards) and "Player Card".
    """

    background = TABLE_GREEN
    prompt = BLACKJACK_PROMPT
    action_only_prompt = BLACKJACK_ACTION_ONLY_PROMPT

    def __init__(self, natural: bool = False, sab: bool = False, **kwargs: Any) -> None:
        super().__init__(("stand", "hit"), **kwargs)
        self.natural = require_bool("natural", natural)
        self.sab = require_bool("sab", sab)
        self.player: list[Card] = []
        self.dealer: list[Card] = []
        self.finished = False

    def _draw_card(self) -> Card:
        # Thirteen equally likely ranks: the same values as Gymnasium's deck [1..10, 10, 10, 10].
        return Card(random_suit(self.np_random), RANKS[int(self.np_random.integers(13))])

    def _start_episode(self, options: dict[str, Any] | None) -> None:
        self.finished = False
        if options is not None:
            unknown = set(options) - {"player", "dealer"}
            if unknown or not {"player", "dealer"} <= set(options):
                raise ValueError(f"Blackjack options take exactly 'player' and 'dealer', got {sorted(options)}")
            self.player = parse_cards(options["player"], what="player")
            self.dealer = parse_cards(options["dealer"], what="dealer")
            if len(self.player) < 2 or len(self.dealer) < 2:
                raise ValueError("player and dealer must each hold at least 2 cards")
            if hand_total(self.player) > 21:
                raise ValueError(f"the player's hand {options['player']!r} is already bust")
            if hand_total(self.dealer) > 21:
                raise ValueError(f"the dealer's hand {options['dealer']!r} is already bust")
            return
        self.dealer = [self._draw_card(), self._draw_card()]
        self.player = [self._draw_card(), self._draw_card()]

    def _apply(self, action: str) -> Outcome:
        if action == "hit":
            self.player.append(self._draw_card())
            if hand_total(self.player) > 21:
                self.finished = True
                return Outcome(-1.0, terminated=True)
            return Outcome(0.0)
        self.finished = True
        while hand_total(self.dealer) < 17:
            self.dealer.append(self._draw_card())
        player, dealer = hand_total(self.player), hand_total(self.dealer)
        dealer = 0 if dealer > 21 else dealer
        reward = float((player > dealer) - (player < dealer))
        if self.sab and is_natural(self.player) and not is_natural(self.dealer):
            reward = 1.0
        elif not self.sab and self.natural and is_natural(self.player) and reward == 1.0:
            reward = 1.5
        return Outcome(reward, terminated=True, success=reward > 0)

    def _draw(self, canvas: Canvas) -> None:
        w, h = canvas.width, canvas.height
        label = max(10, w // 18)
        card_w = int(w * 0.23)
        card_h = int(card_w * 7 / 5)
        gap = max(2, w // 75)
        x0 = w // 60
        canvas.text("Dealer", x0, h // 60, label, WHITE)
        dealer_y = h // 60 + int(label * 1.3)
        shown = self.dealer if self.finished else self.dealer[:1]
        for i, card in enumerate(shown):
            canvas.card(card.code, x0 + i * (card_w + gap) // (1 if len(shown) <= 4 else 2), dealer_y, card_w, card_h)
        if not self.finished:
            canvas.card_back(x0 + card_w + gap, dealer_y, card_w, card_h)
        player_label_y = dealer_y + card_h + h // 30
        canvas.text("Player", x0, player_label_y, label, WHITE)
        player_y = player_label_y + int(label * 1.3)
        per_row = 4
        for i, card in enumerate(self.player):
            row, col = divmod(i, per_row)
            # Extra rows overlap the one above, as cards fanned on a table.
            canvas.card(card.code, x0 + col * (card_w + gap), player_y + row * card_h // 3, card_w, card_h)

    def symbolic_state(self) -> dict[str, Any]:
        visible = self.dealer if self.finished else self.dealer[:1]
        return {"Dealer Card": [c.code for c in visible], "Player Card": [c.code for c in self.player]}

    def describe_state(self) -> str:
        player = ", ".join(c.describe() for c in self.player)
        text = f"Your cards are {player} (total {hand_total(self.player)}). "
        if self.finished:
            dealer = ", ".join(c.describe() for c in self.dealer)
            return text + f"The dealer has {dealer} (total {hand_total(self.dealer)})."
        return text + f"The dealer shows {self.dealer[0].describe()}."

    def oracle_action(self) -> str:
        return basic_strategy(self.player, self.dealer[0])

    def oracle_thoughts(self) -> dict[str, Any]:
        total = hand_total(self.player)
        kind = "soft " if is_soft(self.player) else ""
        action = self.oracle_action()
        # The cards come first: reading them and adding them up are two easier steps than naming the
        # total straight from the picture (what a small model has to do otherwise).
        cards = " ".join(card.label for card in self.player)
        return {
            "thoughts": f"My cards are {cards}, {kind}{total}, against the dealer's {self.dealer[0].label}; "
            f"basic strategy says {action}."
        }
