"""Keeping PPO near the model it started from: a frozen reference and a KL penalty towards it.

SB3's PPO knows only the clipped ratio, the value loss and the entropy bonus. On a small model,
one update that overshoots can push the answers far from the SFT checkpoint (unparseable text, a
reading of the image that no longer matches it) and PPO rarely finds its way back. The usual remedy
in RL fine-tuning of language models is a KL penalty towards the starting model. Here it is a loss
term, computed on the sampled answers in every minibatch:

    penalty = kl_coef * mean over answers of  sum over tokens of  0.5 * (log pi(t) - log pi_ref(t)) ** 2

This is Schulman's "k2" estimator. Its gradient, ``(log pi - log pi_ref) * grad log pi``, is the
score-function gradient of KL(pi || pi_ref) on the sampled tokens. Unlike the exp-based "k3" it
cannot overflow when a token became much less likely. Every token weighs 1, thoughts included:
``cot_weight`` decides how much credit the thoughts get for the reward, while the penalty is about
keeping the whole text close to what SFT taught.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict, deque
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with no trainable parameters, in eval mode (the reference for full fine-tuning)."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


class ReferenceCache:
    """The reference's per-token log-probabilities of recent (observation, answer) pairs.

    The reference is frozen, so they depend on the pair alone. PPO scores each rollout sample once per
    epoch, and SB3 shuffles the samples into new minibatches each epoch. The reference forward is
    therefore run only for a minibatch holding a sample it has not seen (in practice, the first
    epoch), which saves three of its four passes at the paper's 4 epochs. The oldest entries are
    dropped past ``max_entries``.
    """

    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._rows: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    @staticmethod
    def _keys(obs: dict[str, torch.Tensor], tokens: torch.Tensor) -> list[bytes]:
        parts = [torch.as_tensor(value).detach().cpu().reshape(len(tokens), -1).numpy() for _, value in sorted(obs.items())]
        parts.append(tokens.detach().cpu().numpy())
        return [hashlib.blake2b(b"".join(part[row].tobytes() for part in parts), digest_size=16).digest()
                for row in range(len(tokens))]

    def get(self, obs: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor | None:
        """The cached rows for this batch, or None unless every row is cached."""
        keys = self._keys(obs, tokens)
        if not all(key in self._rows for key in keys):
            return None
        return torch.stack([self._rows[key] for key in keys])

    def put(self, obs: dict[str, torch.Tensor], tokens: torch.Tensor, reference_log_probs: torch.Tensor) -> None:
        for key, row in zip(self._keys(obs, tokens), reference_log_probs.detach().cpu()):
            self._rows[key] = row
            self._rows.move_to_end(key)
        while len(self._rows) > self.max_entries:
            self._rows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._rows)


class KLReference(nn.Module):
    """The KL penalty's reference: the model as loaded, its per-token log-probabilities and statistics.

    With LoRA the reference is the base with the adapter switched off (``disable_adapter``: no second
    copy in memory); with full fine-tuning it is a frozen copy taken before training (twice the
    weights). The frozen copy is a submodule, so it follows ``.to(device)``; checkpoints never hold
    it (it is rebuilt from the policy's ``model`` at load time).

    :param model: the model as loaded, before it is made trainable.
    :param uses_adapter: the policy trains a LoRA adapter (the reference is then the base without it).
    :param max_cached: the cache's size in (observation, answer) rows.

    ``recent_kl`` holds the mean KL estimate of every minibatch since a logger last read it.
    """

    def __init__(self, model: nn.Module, uses_adapter: bool, max_cached: int = 65536) -> None:
        super().__init__()
        self.uses_adapter = uses_adapter
        self.frozen = None if uses_adapter else frozen_copy(model)
        self.cache = ReferenceCache(max_cached)
        self.recent_kl: deque[float] = deque(maxlen=4096)

    @torch.no_grad()
    def log_probs(self, distribution, images: Sequence[np.ndarray], prompts: Sequence[str], tokens: torch.Tensor,
                  device: torch.device, legal=None) -> torch.Tensor:
        """Per-token log-probabilities of ``tokens`` under the reference (``distribution`` scores them, with the
        policy's legal-action masks where it has them: the KL is between the two constrained distributions)."""
        if self.uses_adapter:
            with distribution.model.disable_adapter():
                return distribution.score(images, prompts, tokens, device, with_entropy=False, legal=legal).per_token
        return distribution.score(images, prompts, tokens, device, with_entropy=False, model=self.frozen,
                                  legal=legal).per_token

    def kl(self, distribution, obs: dict[str, torch.Tensor], images, prompts, tokens: torch.Tensor,
           per_token: torch.Tensor, valid: torch.Tensor, legal=None) -> torch.Tensor:
        """Mean k2 KL estimate between the policy's ``per_token`` and the reference over the batch."""
        reference = self.cache.get(obs, tokens)
        if reference is None:
            reference = self.log_probs(distribution, images, prompts, tokens, per_token.device, legal)
            self.cache.put(obs, tokens, reference)
        kl = kl_to_reference(per_token, reference.to(per_token.device), valid.to(per_token.device)).mean()
        self.recent_kl.append(float(kl.detach()))
        return kl

    def state_dict(self, *args, **kwargs):  # the frozen copy is rebuilt from the policy's model, never saved
        return OrderedDict()


def kl_to_reference(log_probs: torch.Tensor, reference_log_probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-answer k2 estimate of KL(policy || reference): ``sum_t 0.5 * (lp_t - ref_t)^2`` over valid tokens.

    ``log_probs`` (batch, tokens) carries the gradient; ``reference_log_probs`` is a constant.
    """
    difference = (log_probs - reference_log_probs.detach()).masked_fill(~valid, 0.0)
    return 0.5 * difference.pow(2).sum(-1)


class _AddGradient(torch.autograd.Function):
    """Identity on ``value``; its backward also sends a gradient of 1 into the scalar ``term``."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, term: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, torch.ones((), dtype=grad.dtype, device=grad.device)


def carrying_loss_term(value: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``value`` unchanged, but any loss computed from it is differentiated as if ``term`` were added.

    SB3's PPO builds its loss from what ``evaluate_actions`` returns and has no slot for another
    term. Attaching the penalty to the returned log-probabilities adds its gradient to the same
    backward pass (so to the same gradient clipping and optimizer step) while every value PPO
    computes and logs (ratio, clip fraction, approx KL, losses) stays exactly SB3's.
    """
    if not (torch.is_grad_enabled() and term.requires_grad):
        return value
    return _AddGradient.apply(value, term)
