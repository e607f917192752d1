"""Builders shared by the policy tests."""

import gymnasium as gym
import numpy as np
import torch

import gym_vlm_cards  # noqa: F401
from vlm_policy import VLMPolicy
from vlm_policy.env_bridge import TokenActionWrapper, encode_prompt, tokenizer_fingerprint
from vlm_policy.loading import load_processor

PROMPTS = ["short", "a much longer prompt with many more words in it than the other one", "mid length prompt"]


def wrapped_env(model="tiny", max_new_tokens=16, env_id="gym_cards/NumberLine-v0", image_size=64, **kwargs):
    processor = load_processor(model)
    env = gym.make(env_id, image_size=image_size)
    return TokenActionWrapper(env, processor.tokenizer, max_new_tokens=max_new_tokens, **kwargs)


def make_policy(model="tiny", max_new_tokens=16, lr=1e-4, **policy_kwargs):
    env = wrapped_env(model, max_new_tokens)
    policy = VLMPolicy(env.observation_space, env.action_space, lambda _: lr, model=model, **policy_kwargs)
    policy.set_training_mode(False)
    return policy, env


def batch_obs(policy, prompts=PROMPTS, size=64, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (len(prompts), size, size, 3)).astype(np.float32)
    fingerprint = float(tokenizer_fingerprint(policy.bundle.tokenizer))
    return {
        "image": torch.tensor(images),
        "prompt": torch.tensor(np.stack([encode_prompt(p, 4096) for p in prompts]).astype(np.float32)),
        "tokenizer": torch.full((len(prompts), 1), fingerprint),
    }


def answer_tokens(policy, text, max_new_tokens):
    """Token ids of ``text`` followed by the end token, padded like generated actions."""
    ids = policy.bundle.tokenizer(text, add_special_tokens=False).input_ids + [policy.end_ids[0]]
    ids = ids[:max_new_tokens] + [policy.end_ids[0]] * (max_new_tokens - len(ids))
    return torch.tensor([ids], dtype=torch.float32)
