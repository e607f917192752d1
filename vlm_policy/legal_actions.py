"""Legal-action decoding: once an answer's action value opens, only tokens that continue a legal action
(or close the value on one) may be written; the thoughts stay free.

The text counterpart of sb3-contrib's action masks. Whether a token may come next is a function of the
answer's tokens so far and the row's legal actions alone, so generation applies it at every step and the
update's teacher-forced scoring applies the very same masks at every position: the answers are sampled
from exactly the distribution that PPO scores.

* The answer's text is the concatenation of its tokens' *pieces* (each token's text as it reads after
  another token, leading spaces kept), found once per tokenizer; no token id is hard-coded.
* A value opens at ``"action": "`` (JSON's spelling, the one the prompts ask for) and closes at the next
  ``"``. Inside it a token is allowed when the value with its piece is still the start of some legal
  action, or when its piece completes one and then closes the value (``"`` and whatever follows it).
* Where no legal action starts with the value written so far (a token that opened the value and began
  it in one), nothing is masked: the rule stays a function of the tokens, and the env judges the answer.
* The legal actions travel in the observation (``legal_actions``: a JSON list, UTF-8 bytes), as the
  prompt does (:func:`vlm_policy.env_bridge.encode_legal_actions`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from functools import cached_property

import torch

#: Where an action value opens: the JSON key, a colon and the opening quote.
VALUE_OPENS = re.compile(r'"action"\s*:\s*"')
#: The opening's plain spelling (the prompts' JSON): a text ending part-way into it may open a value next.
VALUE_PREFIX = '"action": "'
#: :meth:`LegalActionMasks.finish_cost` of a text no tokens can write.
IMPOSSIBLE = 1 << 30
#: What may come next: None (any token), ``(True, ids)`` (only ids) or ``(False, ids)`` (any but ids).
Mask = tuple[bool, torch.Tensor] | None


def token_pieces(tokenizer, vocab_size: int) -> list[str]:
    """Each token id's text as it reads after another token (leading spaces kept); "" for special tokens
    and ids beyond the tokenizer."""
    anchor = tokenizer("a", add_special_tokens=False).input_ids
    base = tokenizer.decode(anchor, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    known = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode([anchor + [i] for i in range(known)], skip_special_tokens=True,
                                   clean_up_tokenization_spaces=False)
    pieces = [text[len(base):] if text.startswith(base) else "" for text in texts]
    return pieces + [""] * (vocab_size - known)


class LegalActionMasks:
    """The allowed next tokens of answers whose action values must name legal actions (see the module).

    Every rule is a function of the answer's tokens so far, the row's legal actions and the tokens left in
    the answer budget: a value may open only where some legal action can still be written out and closed
    before the budget ends, and inside it only tokens that leave such an ending possible are allowed, so
    an answer never stops half-way through an action.
    """

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = list(pieces)
        self.vocab_size = len(self.pieces)
        #: Pieces without a quote, by their text: the tokens that continue a value by exactly that text.
        self.continuing: dict[str, list[int]] = defaultdict(list)
        #: Pieces with a quote, by their text before it: the tokens that end a value with that text and close it.
        self.closing: dict[str, list[int]] = defaultdict(list)
        #: The tokens whose piece holds a quote (only they can open a value).
        self.quoted: list[int] = []
        for token, piece in enumerate(self.pieces):
            if '"' in piece:
                self.closing[piece[: piece.index('"')]].append(token)
                self.quoted.append(token)
            elif piece:
                self.continuing[piece].append(token)
        self._cost: dict[str, int] = {}
        self._inside: dict[tuple[str, tuple[str, ...], int], torch.Tensor | None] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer, vocab_size: int) -> LegalActionMasks:
        return cls(token_pieces(tokenizer, vocab_size))

    def text(self, ids: Sequence[int]) -> str:
        return "".join(self.pieces[int(i)] for i in ids)

    @staticmethod
    def open_value(text: str) -> str | None:
        """The action value written so far when the text ends inside one, else None."""
        start = None
        for opened in VALUE_OPENS.finditer(text):  # the last opening counts: a value holds no quote
            start = opened.end()
        if start is None or '"' in text[start:]:
            return None
        return text[start:]

    def finish_cost(self, rest: str) -> int:
        """The fewest tokens that write ``rest`` and close the value (a large number where none can)."""
        if rest not in self._cost:
            best = 1 if rest in self.closing else IMPOSSIBLE
            for end in range(1, len(rest) + 1):
                if rest[:end] in self.continuing:
                    best = min(best, 1 + self.finish_cost(rest[end:]))
            self._cost[rest] = best
        return self._cost[rest]

    def can_finish(self, value: str, legal: Sequence[str], tokens_left: int) -> bool:
        """Whether some legal action that starts with ``value`` can be finished in ``tokens_left`` tokens."""
        return any(action.startswith(value) and self.finish_cost(action[len(value):]) <= tokens_left
                   for action in legal)

    def allowed(self, ids: Sequence[int], legal: Sequence[str], tokens_left: int) -> Mask:
        """What may follow ``ids`` (an answer's tokens so far) with ``tokens_left`` tokens of budget left,
        this one included: None (anything), or ``(True, ids)`` (only those) or ``(False, ids)`` (all but those)."""
        return self.allowed_after(self.text(ids), legal, tokens_left)

    def allowed_after(self, text: str, legal: Sequence[str], tokens_left: int) -> Mask:
        if not legal:
            return None
        legal = tuple(legal)
        value = self.open_value(text)
        if value is not None:
            only = self._inside_value(value, legal, tokens_left)
            return None if only is None else (True, only)
        # Outside a value: a token whose piece opens a value must open one that a legal action can finish in
        # time, and any value it also closes must be legal.
        if not self._may_open(text):
            return None
        tail = text[-len(VALUE_PREFIX) - 8:]
        barred = [token for token in self.quoted if not self._opens_well(tail, self.pieces[token], legal, tokens_left)]
        return (False, torch.tensor(barred, dtype=torch.long)) if barred else None

    def _opens_well(self, tail: str, piece: str, legal: tuple[str, ...], tokens_left: int) -> bool:
        """Whether every value that ``piece`` (written after ``tail``, outside any value) opens is legal when
        it closes in the piece, or can still be finished as a legal action in the tokens left when it does not."""
        combined = tail + piece
        for opened in VALUE_OPENS.finditer(combined):
            if opened.end() <= len(tail):
                continue  # opened (and closed) before this token
            value, quote, _ = combined[opened.end():].partition('"')
            if quote:
                if value not in legal:
                    return False
            elif not self.can_finish(value, legal, tokens_left - 1):
                return False
        return True

    def _may_open(self, text: str) -> bool:
        """Whether a token appended to ``text`` could open a value: the text ends part-way into the
        opening's spelling, or some token holds all of it."""
        if self._openers_whole:
            return True
        return any(text.endswith(VALUE_PREFIX[:end]) for end in range(1, len(VALUE_PREFIX))) \
            or bool(re.search(r'"action"\s*:?\s*$', text))

    @cached_property
    def _openers_whole(self) -> bool:
        return any(VALUE_OPENS.search(self.pieces[token]) for token in self.quoted)

    def _inside_value(self, value: str, legal: tuple[str, ...], tokens_left: int) -> torch.Tensor | None:
        key = (value, legal, tokens_left)
        if key not in self._inside:
            found: set[int] = set()
            for action in legal:
                if not action.startswith(value):
                    continue
                rest = action[len(value):]
                for end in range(1, len(rest) + 1):
                    if rest[:end] in self.continuing and self.finish_cost(rest[end:]) <= tokens_left - 1:
                        found.update(self.continuing[rest[:end]])
                for token in self.closing.get(rest, ()):  # it closes the value; what follows must open well
                    piece = self.pieces[token]
                    if self._opens_well('"', piece[len(rest) + 1:], legal, tokens_left):
                        found.add(token)
            # No legal action continues what was written: nothing is masked (the env judges the answer).
            self._inside[key] = torch.tensor(sorted(found), dtype=torch.long) if found else None
        return self._inside[key]

    def apply(self, scores: torch.Tensor, tokens: torch.Tensor, legal: Sequence[Sequence[str]],
              budget: int) -> torch.Tensor:
        """``scores`` (batch, positions, vocab) with the disallowed ids of every position at -inf; position ``j``
        of row ``b`` is the choice of ``tokens[b, j]`` after ``tokens[b, :j]``, ``budget - j`` tokens left."""
        rows, columns, masks = [], [], []
        for row, (answer, actions) in enumerate(zip(tokens.tolist(), legal)):
            text = ""
            for position in range(scores.shape[1]):
                mask = self.allowed_after(text, actions, budget - position)
                if mask is not None:
                    rows.append(row)
                    columns.append(position)
                    masks.append(mask)
                text += self.pieces[answer[position]]
        return self._masked(scores, rows, columns, masks)

    def apply_step(self, scores: torch.Tensor, answers: torch.Tensor, legal: Sequence[Sequence[str]],
                   budget: int) -> torch.Tensor:
        """``scores`` (batch, vocab) of the next token after ``answers`` (batch, tokens so far), masked."""
        rows, masks = [], []
        for row, (answer, actions) in enumerate(zip(answers.tolist(), legal)):
            mask = self.allowed(answer, actions, budget - len(answer))
            if mask is not None:
                rows.append(row)
                masks.append(mask)
        if not rows:
            return scores
        return self._masked(scores.unsqueeze(1), rows, [0] * len(rows), masks).squeeze(1)

    def _masked(self, scores: torch.Tensor, rows: list[int], columns: list[int], masks: list) -> torch.Tensor:
        if not rows:
            return scores
        vocab = scores.shape[-1]
        keep = torch.zeros(len(rows), vocab, dtype=torch.bool)
        for index, (only, ids) in enumerate(masks):
            ids = ids[ids < vocab]
            if only:
                keep[index, ids] = True
            else:
                keep[index] = True
                keep[index, ids] = False
        rows_t = torch.tensor(rows, device=scores.device)
        columns_t = torch.tensor(columns, device=scores.device)
        chosen = scores[rows_t, columns_t].masked_fill(~keep.to(scores.device), float("-inf"))
        return scores.index_put((rows_t, columns_t), chosen)  # out of place: the gradient flows through
