"""NumberLine: move a number one step at a time until it equals a target."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from gym_vlm_cards.rendering import BLACK, Canvas, fitting_size
from gym_vlm_cards.text_env import Outcome, TextActionEnv, require_int

NUMBERLINE_PROMPT = (
    "You are playing the number line game. The image shows a target number and a current number. "
    "Each turn you may add one to the current number or subtract one from it, and you win when the "
    "current number equals the target. Read both numbers from the image, then reply with a JSON "
    "object in exactly this format: "
    '{"current number": x, "target number": x, "thoughts": "compare the current number with the '
    'target and decide which way to move", "action": "+" or "-"}'
)
NUMBERLINE_ACTION_ONLY_PROMPT = (
    "You are playing the number line game. The image shows a target number and a current number. "
    "Each turn you may add one to the current number or subtract one from it, and you win when the "
    "current number equals the target. Reply with a JSON object in exactly this format: "
    '{"action": "+" or "-"}'
)


class NumberLineEnv(TextActionEnv):
    """Move the current number towards a target, one step at a time.

    ## Description
    A target and a current number are drawn in 0..``max_position``, never equal at the start. Each
    step adds one to the current number or subtracts one from it (staying within the line).

    ## Action Space
    Text (the model's answer; see :mod:`gym_vlm_cards.parsing`), or with ``action_mode="discrete"``
    ``Discrete(2)`` in the reference's order: 0 = ``"-"``, 1 = ``"+"``.

    ## Observation Space
    ``Box(0, 255, (300, 300, 3), uint8)`` by default: "Target: t" and "Current: c" in large type.

    ## Rewards
    +1 when the current number reaches the target; -1 when a move does not bring it closer (including
    pushing against either end); 0 otherwise. An unreadable answer: -1 (``invalid_action="penalize"``).

    ## Episode End
    Terminated when current == target (a success); truncated by the registered step limit (10).

    ## Information
    The state under "Target" and "Current"; the keys every task shares are listed in :class:`TextActionEnv`.

    ## Version History
    * v0: the reference's id, rules and rewards, with the changes every task makes (see
      :class:`TextActionEnv`); registered step limit 10; frames are drawn with the shipped font at any ``image_size``.

    ## Arguments
    ``max_position`` (default 5), plus the :class:`TextActionEnv` arguments. ``reset(options=
    {"current": 1, "target": 3})`` starts from a given state. ``info`` holds "Target" and "Current".
    """

    prompt = NUMBERLINE_PROMPT
    action_only_prompt = NUMBERLINE_ACTION_ONLY_PROMPT
    deterministic_steps = True

    def __init__(self, max_position: int = 5, **kwargs: Any) -> None:
        self.max_position = require_int("max_position", max_position, minimum=1)
        super().__init__(("-", "+"), **kwargs)
        self.current = 0
        self.target = 1
        self.text_size = self._fitting_text_size()

    def _fitting_text_size(self) -> int:
        """The largest type (up to a seventh of the height) whose widest line fits 90% of the width."""
        return fitting_size(f"Current: {self.max_position}", max(8, self.height // 7), int(0.9 * self.width))

    def _start_episode(self, options: dict[str, Any] | None) -> None:
        if options is not None:
            self.current, self.target = self._state_from_options(options)
            return
        self.current = int(self.np_random.integers(0, self.max_position + 1))
        # The target is any other position, uniformly.
        offset = int(self.np_random.integers(1, self.max_position + 1))
        self.target = (self.current + offset) % (self.max_position + 1)

    def _state_from_options(self, options: dict[str, Any]) -> tuple[int, int]:
        unknown = set(options) - {"current", "target"}
        if unknown or not {"current", "target"} <= set(options):
            raise ValueError(f"NumberLine options take exactly 'current' and 'target', got {sorted(options)}")
        values = []
        for key in ("current", "target"):
            value = options[key]
            # Any integer type (numpy's too), but not bools, which Python counts as ints.
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
                    or not 0 <= value <= self.max_position:
                raise ValueError(f"option {key!r} must be an int in [0, {self.max_position}], got {value!r}")
            values.append(int(value))
        if values[0] == values[1]:
            raise ValueError(f"current and target must differ at the start, both are {values[0]}")
        return values[0], values[1]

    def _apply(self, action: str) -> Outcome:
        before = abs(self.current - self.target)
        step = 1 if action == "+" else -1
        self.current = min(max(self.current + step, 0), self.max_position)
        after = abs(self.current - self.target)
        if after == 0:
            return Outcome(1.0, terminated=True, success=True)
        return Outcome(0.0 if after < before else -1.0)

    def _draw(self, canvas: Canvas) -> None:
        x = canvas.width // 20
        canvas.text(f"Target: {self.target}", x, canvas.height * 20 // 100, self.text_size, BLACK)
        canvas.text(f"Current: {self.current}", x, canvas.height * 60 // 100, self.text_size, BLACK)

    def symbolic_state(self) -> dict[str, Any]:
        return {"Target": self.target, "Current": self.current}

    def describe_state(self) -> str:
        return f"The target number is {self.target} and the current number is {self.current}."

    def oracle_action(self) -> str:
        return "+" if self.target > self.current else "-"

    def oracle_thoughts(self) -> dict[str, Any]:
        direction = "smaller" if self.current < self.target else "larger"
        verb = "add one" if self.current < self.target else "subtract one"
        return {
            "current number": self.current,
            "target number": self.target,
            "thoughts": f"{self.current} is {direction} than {self.target}, so I {verb}.",
        }
