"""Log-probabilities of generated answers, as the paper weighs them.

``log pi(answer) = cot_weight * sum log p(thought tokens) + sum log p(action tokens)``

* One function, :func:`process_logits`, turns raw logits into the sampling distribution (temperature,
  banned tokens); generation samples from it and both the rollout and ``evaluate_actions`` score with
  it, so the two agree to float precision.
* Thought and action tokens are told apart by where the ``"action"`` key starts in the decoded
  text (the same rule as the env's parser), mapped back to a token index by decoding prefixes: no
  token ids are hard-coded, so any tokenizer works.
* Tokens after the first end-of-sequence are masked out; the end token itself counts as an action
  token (ending the answer is part of the decision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gym_vlm_cards.parsing import action_key_start


def banned_token_mask(tokenizer, vocab_size: int, end_ids: Sequence[int]) -> torch.Tensor:
    """True for ids that must never be sampled: special tokens (image ones included) other than the
    end tokens, and ids beyond the tokenizer (models often pad their embedding matrix)."""
    banned = torch.zeros(vocab_size, dtype=torch.bool)
    banned[len(tokenizer):] = True
    specials = set(tokenizer.all_special_ids)
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            specials.add(int(token_id))
    for name in ("image_token_id", "video_token_id", "boi_token_id", "eoi_token_id"):
        token_id = getattr(tokenizer, name, None)
        if isinstance(token_id, int):
            specials.add(token_id)
    for token_id in specials - set(end_ids):
        if 0 <= token_id < vocab_size:
            banned[token_id] = True
    return banned


def process_logits(logits: torch.Tensor, temperature: float, banned: torch.Tensor) -> torch.Tensor:
    """The sampling distribution's logits: float32, divided by the temperature, banned ids at -inf.

    A temperature of 0 means greedy decoding; the scores are then left at temperature 1.
    """
    scores = logits.float()
    if temperature > 0:
        scores = scores / temperature
    return scores.masked_fill(banned.to(scores.device)[: scores.shape[-1]], float("-inf"))


@dataclass
class TokenMasks:
    """Per-token masks of a batch of generated answers (batch, max_new_tokens)."""

    valid: torch.Tensor  # up to and including the first end token
    thought: torch.Tensor  # valid tokens before the "action" key
    action: torch.Tensor  # valid tokens from the "action" key on

    def weights(self, cot_weight: float) -> torch.Tensor:
        return self.thought.float() * cot_weight + self.action.float()


def valid_mask(tokens: torch.Tensor, end_ids: Sequence[int]) -> torch.Tensor:
    """True up to and including the first end token of each row (all True when there is none)."""
    is_end = torch.isin(tokens, torch.as_tensor(list(end_ids), device=tokens.device))
    ends_before = torch.cumsum(is_end.int(), dim=-1) - is_end.int()
    return ends_before == 0


def answer_ids(tokens: Sequence[int], end_ids: Sequence[int]) -> list[int]:
    """The answer's ids before the first end token."""
    ids = []
    for token in tokens:
        if int(token) in end_ids:
            break
        ids.append(int(token))
    return ids


def answer_text(tokenizer, tokens: Sequence[int], end_ids: Sequence[int]) -> str:
    """The text of an answer's token ids, up to the first end token (what the env receives as the action)."""
    return tokenizer.decode(answer_ids(tokens, end_ids), skip_special_tokens=True)


def first_action_token(tokenizer, ids: Sequence[int]) -> int:
    """Index of the token holding the first character of the "action" key (len(ids) if none).

    When the answer has no action key at all, every token is treated as an action token (index 0):
    an answer that forgets the format is the decision, and must be weighted fully.
    """
    text = tokenizer.decode(ids, skip_special_tokens=True)
    start = action_key_start(text)
    if start is None:
        return 0
    # Smallest k with len(decode(ids[:k+1])) > start; prefix lengths grow with k, so bisect.
    low, high = 0, len(ids) - 1
    while low < high:
        middle = (low + high) // 2
        if len(tokenizer.decode(ids[: middle + 1], skip_special_tokens=True)) > start:
            high = middle
        else:
            low = middle + 1
    return low


def token_masks(tokenizer, tokens: torch.Tensor, end_ids: Sequence[int]) -> TokenMasks:
    """Valid / thought / action masks of generated tokens (batch, max_new_tokens)."""
    valid = valid_mask(tokens, end_ids)
    action = torch.zeros_like(valid)
    for row, row_tokens in enumerate(tokens.tolist()):
        ids = answer_ids(row_tokens, end_ids)
        split = first_action_token(tokenizer, ids) if ids else 0
        action[row, split:] = True
    action &= valid
    return TokenMasks(valid=valid, thought=valid & ~action, action=action)


def weighted_sum(per_token: torch.Tensor, masks: TokenMasks, cot_weight: float) -> torch.Tensor:
    """``cot_weight * sum(thought) + sum(action)`` for each row."""
    return (per_token * masks.weights(cot_weight).to(per_token.device)).sum(-1)
