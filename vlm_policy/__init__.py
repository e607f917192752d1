"""vlm_policy: PPO fine-tuning of vision-language models through Stable-Baselines3.

    from stable_baselines3 import PPO
    from vlm_policy import VLMPolicy, make_vlm_vec_env

    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=4, model="tiny", seed=0)
    model = PPO(VLMPolicy, env, n_steps=8, batch_size=8, n_epochs=1, policy_kwargs={"model": "tiny"})
    model.learn(64)

The names below are imported on first use (PEP 562), so that ``vlm-cards --help`` and the modules that
need no torch start without importing it.
"""

from importlib import import_module
from typing import Any

import gym_vlm_cards  # noqa: F401  (registers the gym_cards tasks for make_vlm_vec_env)

_WHERE = {
    "TokenActionWrapper": "vlm_policy.env_bridge",
    "make_vlm_vec_env": "vlm_policy.env_bridge",
    "load_vlm": "vlm_policy.loading",
    "VLMPolicy": "vlm_policy.policy",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'vlm_policy' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
