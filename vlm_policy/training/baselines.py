"""The paper's CNN + RL comparison: SB3 PPO with CnnPolicy, and sb3-contrib's MaskablePPO with
legal-action masks, on ``action_mode="discrete"`` with the same env-step budget."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from gym_vlm_cards.evaluate import EvalResult, run_episodes
from vlm_policy.training.configs import whole_rollouts


class _ModelAgent:
    """Adapts an SB3 model to the ``act(observation, info)`` agent interface (greedy)."""

    def __init__(self, model, env: gym.Env, masked: bool) -> None:
        self.model, self.env, self.masked = model, env, masked

    def act(self, observation: np.ndarray, info: dict[str, Any]) -> int:
        kwargs = {"action_masks": self.env.unwrapped.action_masks()} if self.masked else {}
        action, _ = self.model.predict(observation, deterministic=True, **kwargs)
        return int(action)


#: Env steps of one rollout of either baseline (8 envs x 64 steps): SB3 trains whole rollouts.
BASELINE_ROLLOUT = 8 * 64


def baseline_steps(timesteps: int) -> int:
    """The env steps each baseline makes for a budget of ``timesteps``: whole rollouts, with a warning when the
    budget is not a whole number of them (SB3 finishes the rollout it is in)."""
    made = whole_rollouts(timesteps, BASELINE_ROLLOUT)
    if made != timesteps:
        warnings.warn(f"--timesteps {timesteps} is not a whole number of rollouts ({BASELINE_ROLLOUT} env steps: 8 envs "
                      f"x 64 steps): each baseline makes {made} env steps", stacklevel=3)
    return made


def train_cnn_baselines(env_id: str, timesteps: int, eval_episodes: int, eval_seed: int, seed: int = 0,
                        image_size: int = 64, progress: bool = False) -> list[EvalResult]:
    """Trains PPO(CnnPolicy) and MaskablePPO(CnnPolicy) for ``timesteps`` env steps each (rounded up to whole
    rollouts of :data:`BASELINE_ROLLOUT` env steps, with a warning); evaluates both."""
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.wrappers import ActionMasker
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    baseline_steps(timesteps)
    env_kwargs = {"action_mode": "discrete", "image_size": image_size}
    results = []
    plain = PPO("CnnPolicy", make_vec_env(env_id, n_envs=8, seed=seed, env_kwargs=env_kwargs), n_steps=64,
                batch_size=128, gamma=0.9, seed=seed, verbose=0)
    plain.learn(timesteps, progress_bar=progress)
    env = gym.make(env_id, **env_kwargs)
    results.append(run_episodes(env, _ModelAgent(plain, env, masked=False), eval_episodes, eval_seed, name="CNN + PPO"))

    def masked_env() -> gym.Env:
        base = gym.make(env_id, **env_kwargs)
        return ActionMasker(base, lambda e: e.unwrapped.action_masks())

    masked = MaskablePPO("CnnPolicy", make_vec_env(masked_env, n_envs=8, seed=seed), n_steps=64, batch_size=128,
                         gamma=0.9, seed=seed, verbose=0)
    masked.learn(timesteps, progress_bar=progress)
    env = gym.make(env_id, **env_kwargs)
    results.append(run_episodes(env, _ModelAgent(masked, env, masked=True), eval_episodes, eval_seed,
                                name="CNN + MaskablePPO"))
    return results
