"""The base class of every task: an image observation and an action written as text.

A task (one of ours, or a user's own) subclasses :class:`TextActionEnv` and writes only its rules,
its legal actions and its drawing; the base class does the rest the same way for every task:

* the action space: ``Text`` by default, so ``env.step(model_output)`` takes a model's raw answer;
  ``action_mode="discrete"`` gives ``Discrete(len(legal_actions))`` in the task's index order;
* parsing the answer with :mod:`gym_vlm_cards.parsing` and reporting ``info["parsed_action"]`` and
  ``info["action_is_valid"]``;
* what an unparseable answer does (``invalid_action="penalize"`` or ``"random"``);
* ``info["is_success"]`` in every step's info, so the final one has it however the episode ends
  (SB3 reads it there); step limits come from Gymnasium's ``TimeLimit``: each task is registered
  with ``max_episode_steps`` and ``gym.make(id, max_episode_steps=n)`` overrides it;
* the prompts and the text description of the state in ``info``;
* rendering: ``render_mode="rgb_array"`` returns the frame, ``"human"`` shows it in a pygame window.

See ``examples/custom_task.py`` for a complete task written this way.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gym_vlm_cards.parsing import extract_action, normalize
from gym_vlm_cards.rendering import WHITE, Canvas, Color

ACTION_MODES = ("text", "discrete")
INVALID_ACTION_POLICIES = ("penalize", "random")
#: Longest answer the ``Text`` action space advertises; longer strings are still parsed.
MAX_ANSWER_CHARS = 8192
#: Reward for an answer that names no legal action when ``invalid_action="penalize"``.
INVALID_ACTION_REWARD = -1.0


@dataclass(frozen=True)
class Outcome:
    """What one legal action did: the reward, whether the episode ended, and whether it was won."""

    reward: float
    terminated: bool = False
    truncated: bool = False
    success: bool = False


class TextActionEnv(gym.Env):
    """Base class for tasks with an RGB image observation and a text action.

    Subclasses implement the hooks below (the methods that raise ``NotImplementedError``) and pass
    their legal actions to ``__init__``. All randomness must come from ``self.np_random``.

    Args:
        legal_actions: every action of the task, canonical spelling, in discrete index order; or None
            for a task whose actions change with the state (ALFWorld's admissible commands): it then
            implements :meth:`available_actions`, and plays in text mode only.
        image_size: side of the square observation in pixels, or ``(height, width)``.
        action_mode: ``"text"`` (default) or ``"discrete"``.
        invalid_action: ``"penalize"`` (default: reward -1, state unchanged, the step counts) or
            ``"random"`` (a random legal action is taken instead, as in the paper's training runs).
        render_mode: ``None``, ``"rgb_array"`` or ``"human"``.

    There is no step-limit argument: ``gym.make`` wraps the env in ``TimeLimit`` with the limit
    registered for the task (or the ``max_episode_steps`` passed to ``gym.make``).

    Information (every task): each ``info`` holds the task's symbolic state (its own keys),
    ``text_state`` (the state in words), ``prompt`` and ``action_only_prompt``; after a step also
    ``parsed_action`` (the canonical action or None), ``action_is_valid``, ``executed_action`` and
    ``is_success`` (True only on a won step, present in every step's info).

    What every v0 task changes from the reference gym_cards with the same id: the action is the
    model's raw text answer (``action_mode="discrete"`` gives the reference's ``Discrete`` order); an
    unreadable answer costs -1 and changes nothing by default (the reference played a random action:
    ``invalid_action="random"``); step limits are registered with Gymnasium, not built into the env.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 4}
    #: Background of the observation; tasks drawn on a card table override it.
    background: Color = WHITE
    #: The chain-of-thought prompt (JSON answer with "thoughts" then "action").
    prompt: str = ""
    #: The same task asking for the action only (the paper's no-CoT ablation).
    action_only_prompt: str = ""
    #: Whether a step's outcome depends on the state and the action alone (the task draws nothing after
    #: ``reset``): see :meth:`loop_key`.
    deterministic_steps: bool = False

    def __init__(
        self,
        legal_actions: Sequence[str] | None,
        *,
        image_size: int | tuple[int, int] = 300,
        action_mode: str = "text",
        invalid_action: str = "penalize",
        render_mode: str | None = None,
    ) -> None:
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        if invalid_action not in INVALID_ACTION_POLICIES:
            raise ValueError(f"invalid_action must be one of {INVALID_ACTION_POLICIES}, got {invalid_action!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if legal_actions is None:
            if action_mode != "text":
                raise ValueError(f"{type(self).__name__}'s actions change with the state, so it has no discrete action "
                                 "space; use action_mode='text'")
        elif len(legal_actions) == 0 or len(set(map(normalize, legal_actions))) != len(legal_actions):
            raise ValueError(f"legal_actions must be non-empty and distinct after lower-casing: {legal_actions!r}")
        self.height, self.width = _image_shape(image_size)
        #: Every action of a task with a fixed set (empty for a task whose actions change with the state).
        self.legal_actions: tuple[str, ...] = tuple(legal_actions or ())
        self.actions_change = legal_actions is None
        self._lookup = {normalize(a): a for a in self.legal_actions}
        self.action_mode = action_mode
        self.invalid_action = invalid_action
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (self.height, self.width, 3), dtype=np.uint8)
        if action_mode == "text":
            import string

            self.action_space: spaces.Space = spaces.Text(max_length=MAX_ANSWER_CHARS, charset=string.printable)
        else:
            self.action_space = spaces.Discrete(len(self.legal_actions))
        self.elapsed_steps = 0
        self._episode_over = True  # until the first reset
        self._window = None
        self._clock = None

    # ------------------------------------------------------------------ hooks for subclasses
    def _start_episode(self, options: dict[str, Any] | None) -> None:
        """Sets up a new episode (from ``self.np_random``, or from ``options``; bad options: ValueError)."""
        raise NotImplementedError

    def _apply(self, action: str) -> Outcome:
        """Plays one legal action (its canonical spelling) and says what happened."""
        raise NotImplementedError

    def _draw(self, canvas: Canvas) -> None:
        """Draws the current state onto a fresh canvas of the task's background colour."""
        raise NotImplementedError

    def symbolic_state(self) -> dict[str, Any]:
        """The state as plain data, for ``info`` (keys as in the reference gym_cards)."""
        raise NotImplementedError

    def describe_state(self) -> str:
        """The state in words, for text-only agents."""
        raise NotImplementedError

    def loop_key(self) -> str | None:
        """The state as a string, when the next steps depend on it and the actions alone: a task with
        :attr:`deterministic_steps` whose unreadable answers are penalized, not replaced by a random action.
        A policy that answers each frame the same way (greedy decoding) and meets the same key twice in an
        episode is in a loop it cannot leave before the step limit. None where steps draw (Blackjack).
        """
        if not self.deterministic_steps or self.invalid_action != "penalize":
            return None
        return json.dumps(self.symbolic_state(), sort_keys=True)

    def oracle_action(self) -> str:
        """The action an expert takes now (canonical spelling)."""
        raise NotImplementedError

    def oracle_thoughts(self) -> dict[str, Any]:
        """The answer fields that come before "thoughts"/"action" in the prompt's JSON, plus "thoughts"."""
        return {"thoughts": f"The best move here is {self.oracle_action()}."}

    def available_actions(self) -> Sequence[str]:
        """The actions legal in the current state (canonical spelling); by default all of them. Tasks
        built with ``legal_actions=None`` implement it."""
        return self.legal_actions

    def _invalid_outcome(self) -> Outcome:
        """What an answer naming no legal action does under ``invalid_action="penalize"``: by default
        reward -1, and the state is left as it was."""
        return Outcome(INVALID_ACTION_REWARD)

    def action_mask(self) -> np.ndarray:
        """Which legal actions make sense now (for MaskablePPO); by default all of them."""
        return np.ones(len(self.legal_actions), dtype=bool)

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options must be a dict, got {type(options).__name__}")
        self._episode_over = True  # stays so if the new episode cannot start: step then asks for reset()
        self._start_episode(options or None)
        self.elapsed_steps = 0
        self._episode_over = False
        if self.render_mode == "human":
            self.render()
        return self._observation(), self._info()

    def step(self, action: Any):
        if self._episode_over:
            raise RuntimeError(f"{type(self).__name__}: no episode is in progress (it ended, or the last reset "
                               "failed); call reset() before stepping again")
        parsed = self._parse(action)
        self.elapsed_steps += 1
        executed = parsed
        if parsed is None and self.invalid_action == "random":
            executed = self._random_legal_action()
        if executed is None:
            outcome = self._invalid_outcome()
        else:
            outcome = self._apply(executed)
        truncated = outcome.truncated
        self._episode_over = outcome.terminated or truncated
        info = self._info(parsed_action=parsed, action_is_valid=parsed is not None, executed_action=executed)
        # In every step's info, so that the last one has it whether the episode terminated, was
        # truncated by the task's rules, or by the TimeLimit wrapper around it.
        info["is_success"] = bool(outcome.success)
        if self.render_mode == "human":
            self.render()
        return self._observation(), float(outcome.reward), bool(outcome.terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() was called without a render_mode; pass render_mode='rgb_array' or 'human'")
            return None
        frame = self._observation()
        if self.render_mode == "rgb_array":
            return frame
        self._show(frame)
        return None

    def close(self) -> None:
        if self._window is not None:
            import pygame

            pygame.display.quit()
            self._window = None

    # ------------------------------------------------------------------ helpers
    def action_masks(self) -> np.ndarray:
        """Alias read by sb3-contrib's MaskablePPO."""
        return self.action_mask()

    def oracle_answer(self, chain_of_thought: bool = True) -> str:
        """The expert's answer in the prompt's JSON format (thoughts then action), for SFT data."""
        action = self.oracle_action()
        if not chain_of_thought:
            return json.dumps({"action": action})
        fields = dict(self.oracle_thoughts())
        fields["action"] = action
        return json.dumps(fields)

    def legal_action_index(self, action: str) -> int:
        """Index of a canonical action in the discrete action space."""
        return self.legal_actions.index(action)

    def _parse(self, action: Any) -> str | None:
        if self.action_mode == "discrete":
            if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
                if isinstance(action, np.ndarray) and action.shape == () and np.issubdtype(action.dtype, np.integer):
                    action = int(action)
                else:
                    raise TypeError(
                        f"in discrete mode the action must be an int in [0, {len(self.legal_actions)}), "
                        f"got {type(action).__name__}"
                    )
            if not 0 <= int(action) < len(self.legal_actions):
                raise ValueError(f"action index {int(action)} is out of range [0, {len(self.legal_actions)})")
            return self.legal_actions[int(action)]
        if not isinstance(action, str):
            example = (tuple(self.available_actions()) or ("...",))[0]
            raise TypeError(
                "in text mode the action must be the model's answer as a str, e.g. "
                f"'{{\"thoughts\": \"...\", \"action\": \"{example}\"}}', got {type(action).__name__}"
            )
        value = extract_action(action)
        if value is None:
            return None
        lookup = {normalize(a): a for a in self.available_actions()} if self.actions_change else self._lookup
        return lookup.get(normalize(value))

    def _random_legal_action(self) -> str:
        if self.actions_change:
            actions = self.available_actions()
            return actions[int(self.np_random.integers(len(actions)))]
        mask = self.action_mask()
        choices = np.flatnonzero(mask) if mask.any() else np.arange(len(self.legal_actions))
        return self.legal_actions[int(self.np_random.choice(choices))]

    def _observation(self) -> np.ndarray:
        canvas = Canvas(self.height, self.width, self.background)
        self._draw(canvas)
        return canvas.pixels

    def _info(self, **extra: Any) -> dict[str, Any]:
        info = self.symbolic_state()
        info["text_state"] = self.describe_state()
        info["prompt"] = self.prompt
        info["action_only_prompt"] = self.action_only_prompt
        info.update(extra)
        return info

    def _show(self, frame: np.ndarray) -> None:
        import pygame

        if self._window is None:
            pygame.display.init()  # display only: pygame.init() would also open the audio device
            pygame.display.set_caption(type(self).__name__)
            self._window = pygame.display.set_mode((self.width, self.height))
            self._clock = pygame.time.Clock()
        surface = pygame.surfarray.make_surface(np.ascontiguousarray(frame.swapaxes(0, 1)))
        self._window.blit(surface, (0, 0))
        pygame.event.pump()
        pygame.display.flip()
        self._clock.tick(self.metadata["render_fps"])


def require_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int, refusing what is not an integer (a bool, a float, a string) or is below ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}: pass a whole number such as {minimum or 1}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return int(value)


def require_bool(name: str, value: Any) -> bool:
    """``value`` as a bool, refusing anything else ("no" is a true string, so it is not read as False)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _image_shape(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        height, width = (require_int("image_size", v) for v in image_size)
    elif isinstance(image_size, numbers.Integral) and not isinstance(image_size, (bool, np.bool_)):
        height = width = int(image_size)
    else:
        raise ValueError(f"image_size must be an int or a (height, width) pair of ints, got {image_size!r}")
    if height < 32 or width < 32:
        raise ValueError(f"image_size must be at least 32x32 pixels, got {height}x{width}")
    return height, width
