"""Data from the agent's own states (DAgger, as ALFWorld's BUTLER agent was trained).

After SFT on the expert's play, the agent plays training episodes with its own sampled answers, and at
every state it reaches the full-information expert (the task's oracle, which replans from any state)
writes the answer it would give there. SFT then goes on over the demonstrations and these labels
together, so that the model learns what to do in the states its own mistakes lead to, which the
expert's play never visits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from vlm_policy.training.demos import example_record

#: The first seed of the relabelling episodes (apart from the test seeds, 100,000, and validation's, 200,000).
RELABEL_SEED = 300_000


class ExpertLabels(gym.Wrapper):
    """Adds each state an episode visits, with the expert's answer there, to ``sink`` as a (record, frame)
    pair of a demonstration set; what the agent sees and does is unchanged."""

    def __init__(self, env: gym.Env, chain_of_thought: bool, sink: list[tuple[dict, np.ndarray]]) -> None:
        super().__init__(env)
        task = env.unwrapped
        if not (hasattr(task, "oracle_answer") and hasattr(task, "symbolic_state")):
            raise TypeError(f"{type(task).__name__} has no oracle (oracle_answer / symbolic_state) to label states")
        self.chain_of_thought = chain_of_thought
        self.sink = sink
        self._episode_seed: int | None = None
        self._step = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        image, info = self.env.reset(seed=seed, options=options)
        self._episode_seed, self._step = seed, 0
        self._label(image, info)
        return image, info

    def step(self, action):
        image, reward, terminated, truncated, info = self.env.step(action)
        self._step += 1
        if not (terminated or truncated):  # a state the agent will act in
            self._label(image, info)
        return image, reward, terminated, truncated, info

    def _label(self, image: np.ndarray, info: dict[str, Any]) -> None:
        task = self.env.unwrapped
        prompt = info["prompt" if self.chain_of_thought else "action_only_prompt"]
        answer = task.oracle_answer(chain_of_thought=self.chain_of_thought)
        env_id = task.spec.id if task.spec is not None else type(task).__name__
        self.sink.append((example_record(env_id, prompt, answer, task.symbolic_state(), self._episode_seed, self._step),
                          np.array(image)))


def labelled_agent_play(policy, env_factory: Callable[[Callable[[gym.Env], gym.Env]], Callable[[], gym.Env]],
                        episodes: int, seed: int, chain_of_thought: bool, parallel: int) -> list[tuple[dict, np.ndarray]]:
    """Every state of ``episodes`` episodes that ``policy`` plays with sampled answers (episode ``i`` seeded
    ``seed + i``), each with the expert's answer, in the order the states were met.

    :param env_factory: ``env_factory(inner)`` is a function making the policy's env with ``inner`` wrapped
        around the task's own (``eval_env_factory(..., inner=inner)``): the labels are taken under it.
    """
    from vlm_policy.training.evaluation import evaluate_vlm

    sink: list[tuple[dict, np.ndarray]] = []
    make_env = env_factory(lambda env: ExpertLabels(env, chain_of_thought, sink))
    evaluate_vlm(policy, make_env, episodes, seed, parallel=parallel, deterministic=False, name="relabel")
    return sink


def describe_labels(steps: list[tuple[dict, np.ndarray]]) -> str:
    """How many states were labelled, and how many of them distinct."""
    states = {json.dumps(record["state"], sort_keys=True) for record, _ in steps}
    return f"{len(steps)} states labelled ({len(states)} distinct)"
