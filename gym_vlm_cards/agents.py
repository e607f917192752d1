"""Reference agents that play any :class:`~gym_vlm_cards.text_env.TextActionEnv`: random and oracle."""

from __future__ import annotations

import json
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from gym_vlm_cards.text_env import TextActionEnv


class Agent(Protocol):
    """Anything with ``act(observation, info) -> action`` (a text answer, or an index in discrete mode)."""

    def act(self, observation: np.ndarray, info: dict[str, Any]) -> Any: ...


def task_of(env: gym.Env) -> TextActionEnv:
    """The task under any Gymnasium wrappers; a clear error for other envs."""
    task = env.unwrapped
    if not isinstance(task, TextActionEnv):
        raise TypeError(f"expected a gym_vlm_cards task, got {type(task).__name__}")
    return task


class RandomAgent:
    """Answers with a uniformly random action legal now, written as the prompt's JSON."""

    def __init__(self, env: gym.Env, seed: int | None = None) -> None:
        self.task = task_of(env)
        self.rng = np.random.default_rng(seed)

    def act(self, observation: np.ndarray, info: dict[str, Any]) -> Any:
        actions = self.task.available_actions()  # all of them, or those legal now (ALFWorld)
        index = int(self.rng.integers(len(actions)))
        if self.task.action_mode == "discrete":
            return index
        return json.dumps({"thoughts": "random", "action": actions[index]})


class OracleAgent:
    """Plays the task's expert move, with its chain-of-thought answer in text mode."""

    def __init__(self, env: gym.Env, seed: int | None = None) -> None:
        self.task = task_of(env)

    def act(self, observation: np.ndarray, info: dict[str, Any]) -> Any:
        if self.task.action_mode == "discrete":
            return self.task.legal_action_index(self.task.oracle_action())
        return self.task.oracle_answer()


AGENTS = {"random": RandomAgent, "oracle": OracleAgent}
