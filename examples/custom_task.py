"""A new task in ~40 lines: name the colour of a square.

Write the rules, the legal actions and the drawing on top of ``TextActionEnv``; register an id with
``gymnasium.register``; get it with ``gym.make``. Everything else (text parsing, discrete mode,
invalid answers, prompts in ``info``, rendering, seeding) comes from the base class.

    python examples/custom_task.py
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from gym_vlm_cards import Outcome, TextActionEnv
from gym_vlm_cards.rendering import Canvas

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220)}


class ColourNameEnv(TextActionEnv):
    """Name the colour of the square in the image: +1 if right, -1 if wrong; one step per episode."""

    prompt = 'Name the colour of the square. Reply with JSON: {"thoughts": "...", "action": "red" or "green" or "blue"}'
    action_only_prompt = 'Name the colour of the square. Reply with JSON: {"action": "red" or "green" or "blue"}'

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(tuple(COLOURS), **kwargs)
        self.colour = "red"

    def _start_episode(self, options: dict[str, Any] | None) -> None:
        if options is not None:
            if options.get("colour") not in COLOURS:
                raise ValueError(f"option 'colour' must be one of {list(COLOURS)}, got {options.get('colour')!r}")
            self.colour = options["colour"]
        else:
            self.colour = list(COLOURS)[int(self.np_random.integers(len(COLOURS)))]

    def _apply(self, action: str) -> Outcome:
        right = action == self.colour
        return Outcome(1.0 if right else -1.0, terminated=True, success=right)

    def _draw(self, canvas: Canvas) -> None:
        side = canvas.width // 2
        canvas.fill(side // 2, side // 2, side, side, COLOURS[self.colour])

    def symbolic_state(self) -> dict[str, Any]:
        return {"Colour": self.colour}

    def describe_state(self) -> str:
        return f"The square is {self.colour}."

    def oracle_action(self) -> str:
        return self.colour


# A step limit, as every task needs one: an untrained policy's invalid answers never end an episode.
gym.register(id="my_tasks/ColourName-v0", entry_point=ColourNameEnv, max_episode_steps=1)

if __name__ == "__main__":
    env = gym.make("my_tasks/ColourName-v0")
    observation, info = env.reset(seed=0)
    observation, reward, terminated, truncated, info = env.step('{"thoughts": "looks red", "action": "Red"}')
    print(f"square was {info['Colour']}, answered {info['parsed_action']!r}, reward {reward:+g}")
