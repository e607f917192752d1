"""Written with the code before the issue-11 move (commit 29e1bbd): a small agent zip for the compat test."""
import json, numpy as np, torch
from stable_baselines3 import PPO
from vlm_policy import VLMPolicy, make_vlm_vec_env
from vlm_policy.random_models import save_random_llava
from vlm_policy.tiny import TinyConfig
from vlm_policy.train import cosine_schedule
torch.manual_seed(0)
small = TinyConfig(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, heads=2)
save_random_llava("legacy_base", seed=0, config=small)
env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=2, model="legacy_base", seed=0, max_new_tokens=8)
model = PPO(VLMPolicy, env, n_steps=4, batch_size=8, n_epochs=1, learning_rate=cosine_schedule(1e-3, 1e-4), seed=0,
            policy_kwargs={"model": "legacy_base", "lora_r": 2, "value_head_layers": (8,), "temperature": 1.0})
model.learn(8)
model.save("legacy_agent.zip")
obs = env.reset()
np.savez("legacy_obs.npz", **obs)
actions, _ = model.predict(obs, deterministic=True)
values = model.policy.predict_values(model.policy.obs_to_tensor(obs)[0]).detach().numpy()
np.savez("legacy_expected.npz", actions=actions, values=values)
print(actions, values)
rng = np.random.default_rng(0)
tokens = torch.tensor(rng.integers(5, 200, size=(2, 8)), dtype=torch.float32)
with torch.no_grad():
    v, lp, ent = model.policy.evaluate_actions(model.policy.obs_to_tensor(obs)[0], tokens)
np.savez("legacy_expected.npz", actions=actions, values=values, tokens=tokens.numpy(), log_prob=lp.numpy())
print(lp)
