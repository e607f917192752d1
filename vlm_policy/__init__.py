"""vlm_policy: PPO fine-tuning of vision-language models through Stable-Baselines3.

    from stable_baselines3 import PPO
    from vlm_policy import VLMPolicy, make_vlm_vec_env

    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=4, model="tiny", seed=0)
    model = PPO(VLMPolicy, env, n_steps=8, batch_size=8, n_epochs=1, policy_kwargs={"model": "tiny"})
    model.learn(64)
"""

import gym_vlm_cards  # noqa: F401  (registers the gym_cards tasks for make_vlm_vec_env)
from vlm_policy.env_bridge import TokenActionWrapper, make_vlm_vec_env
from vlm_policy.loading import load_vlm
from vlm_policy.policy import VLMPolicy

__all__ = ["TokenActionWrapper", "VLMPolicy", "load_vlm", "make_vlm_vec_env"]
