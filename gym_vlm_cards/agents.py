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


class AgentPlays(gym.Wrapper):
    """The env with a reference agent at its controls: ``step`` ignores the action it is given and plays
    the agent's, so the agent acts where the env lives (in a subprocess, beside it). Each episode gets a
    fresh agent seeded with the episode's reset seed, so an episode plays the same however episodes are
    spread over envs."""

    def __init__(self, env: gym.Env, agent: str) -> None:
        super().__init__(env)
        self.agent_class = AGENTS[agent]
        self._observation: Any = None
        self._info: dict[str, Any] = {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.agent = self.agent_class(self.env, seed=seed)
        self._observation, self._info = self.env.reset(seed=seed, options=options)
        return self._observation, self._info

    def step(self, action: Any = None):
        self._observation, reward, terminated, truncated, self._info = self.env.step(
            self.agent.act(self._observation, self._info))
        return self._observation, reward, terminated, truncated, self._info
