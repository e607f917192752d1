"""An AdamW whose parameter groups may scale the learning rate SB3 sets.

SB3's PPO writes the scheduled learning rate into every parameter group before each update, which
would erase a separate rate for the value head; a group's ``lr_scale`` multiplies it at step time.
"""

from __future__ import annotations

import math

import torch


class ScaledLRAdamW(torch.optim.AdamW):
    """AdamW honouring an ``lr_scale`` entry in each parameter group (default 1)."""

    @torch.no_grad()
    def step(self, closure=None):
        saved = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, saved):
                group["lr"] = lr


def cosine_value(done: float, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (done=0) to ``end`` (done=1)."""
    done = min(max(done, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * done))


def cosine_schedule(start: float, end: float):
    """SB3 learning-rate schedule (a function of the progress remaining): cosine from ``start`` to ``end``."""

    def schedule(progress_remaining: float) -> float:
        return cosine_value(1.0 - progress_remaining, start, end)

    return schedule
