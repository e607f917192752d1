"""Loop exploration: rollout steps in a state met before are sampled hotter, and scored at that temperature."""

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from vlm_policy import VLMPolicy, make_vlm_vec_env
from vlm_policy.logprobs import process_logits
from vlm_policy.loop_exploration import SAMPLING_TEMPERATURE, LoopTemperatureCallback, TemperatureRolloutBuffer


def test_per_row_temperatures_are_each_row_s_own_scalar_temperature():
    logits = torch.randn(3, 5, 11)
    banned = torch.zeros(11, dtype=torch.bool)
    banned[2] = True
    together = process_logits(logits, torch.tensor([0.3, 1.0, 2.0]), banned)
    for row, temperature in enumerate((0.3, 1.0, 2.0)):
        assert torch.allclose(together[row], process_logits(logits[row:row + 1], temperature, banned)[0])


class _KeepRollout(LoopTemperatureCallback):
    """Keeps a copy of the first rollout's buffer, before any update."""

    def _on_rollout_end(self) -> None:
        super()._on_rollout_end()
        if not hasattr(self, "first"):
            buffer = self.model.rollout_buffer
            self.first = {"temperatures": buffer.temperatures.copy(), "actions": buffer.actions.copy(),
                          "log_probs": buffer.log_probs.copy(),
                          "observations": {k: v.copy() for k, v in buffer.observations.items()}}


def test_rollout_steps_in_a_state_met_before_are_sampled_hot_and_scored_at_their_temperature():
    # A random tiny model writes unreadable answers: the state stays as it was, so from each episode's second
    # step on the env is back in a state met before.
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=2, model="tiny", max_new_tokens=12, seed=3)
    model = PPO(VLMPolicy, env, n_steps=4, batch_size=8, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"model": "tiny", "temperature": 0.5})
    model.rollout_buffer = TemperatureRolloutBuffer.replacing(model)
    callback = _KeepRollout(loop_temperature=2.0)
    model.learn(8, callback=callback)
    temperatures = callback.first["temperatures"]  # (steps, envs)
    assert set(np.unique(temperatures)) == {0.5, 2.0}
    assert (temperatures[0] == 0.5).all()  # each env's first state is new
    assert callback.hot_steps > 0 and model.policy.rollout_temperatures is None  # cleared after training
    # The update reads each sample's temperature from its observations (the on-policy check is the next test).
    observations = {k: torch.as_tensor(v.reshape(-1, *v.shape[2:])) for k, v in callback.first["observations"].items()}
    actions = torch.as_tensor(callback.first["actions"].reshape(8, -1))
    model.policy.set_training_mode(False)
    with torch.no_grad():
        hot = model.policy.evaluate_actions({**observations, SAMPLING_TEMPERATURE: torch.full((8,), 2.0)}, actions)[1]
        cold = model.policy.evaluate_actions({**observations, SAMPLING_TEMPERATURE: torch.full((8,), 0.5)}, actions)[1]
    assert not torch.allclose(hot, cold)
    samples = next(model.rollout_buffer.get(8))
    assert torch.equal(samples.observations[SAMPLING_TEMPERATURE].sort().values,
                       torch.as_tensor(model.rollout_buffer.temperatures).reshape(-1).sort().values)


def test_a_hot_sample_s_log_probability_is_the_one_the_update_computes():
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=3, model="tiny", max_new_tokens=12, seed=5)
    policy = PPO(VLMPolicy, env, n_steps=2, batch_size=6, seed=0, device="cpu",
                 policy_kwargs={"model": "tiny", "temperature": 0.5}).policy
    policy.set_training_mode(False)
    obs = policy.obs_to_tensor(env.reset())[0]
    policy.rollout_temperatures = torch.tensor([0.5, 2.0, 1.3])
    with torch.no_grad():
        tokens, _, rollout_log_prob = policy(obs)
        assert torch.equal(policy.last_temperatures, policy.rollout_temperatures)
        scored = policy.evaluate_actions({**obs, SAMPLING_TEMPERATURE: policy.last_temperatures}, tokens.float())[1]
        untagged = policy.evaluate_actions(obs, tokens.float())[1]
    assert torch.allclose(rollout_log_prob, scored, atol=1e-4)
    assert torch.allclose(rollout_log_prob[0], untagged[0], atol=1e-4)  # row 0 was sampled at the policy's own
    assert not torch.allclose(rollout_log_prob[1:], untagged[1:], atol=1e-3)
    with torch.no_grad():  # greedy answers ignore the rollout temperatures
        policy(obs, deterministic=True)
    assert policy.last_temperatures is None


def test_the_loop_temperature_must_be_positive():
    with pytest.raises(ValueError, match="loop_temperature must be > 0"):
        LoopTemperatureCallback(0.0)
