"""benchmarks/first_answers.py's measure of the room PPO has: how likely sampling is to write the oracle's answer."""

import numpy as np
import pytest
import torch
from helpers import load_script
from policy_helpers import answer_tokens, make_policy, wrapped_env


def _first_answers():
    return load_script("benchmarks/first_answers.py")


def test_oracle_answer_probability_is_the_policy_s_own_at_the_sampling_temperature():
    module = _first_answers()
    policy, _ = make_policy(max_new_tokens=24, cot_weight=1.0, temperature=0.7)
    env = wrapped_env(max_new_tokens=24)
    observations = [env.reset(seed=i)[0] for i in range(3)]
    answers = ['{"action": "+"}', '{"action": "-"}', "+"]  # short: a random model gives them a probability > 0
    chances = module.oracle_answer_probabilities(policy, observations, answers, temperature=0.7)
    assert all(0 < chance < 1 for chance in chances)
    for observation, answer, chance in zip(observations, answers, chances):
        batch = policy.obs_to_tensor({k: np.stack([v]) for k, v in observation.items()})[0]
        with torch.no_grad():  # λ = 1: the policy's log-probability of the whole answer, at its temperature
            _, log_prob, _ = policy.evaluate_actions(batch, answer_tokens(policy, answer, 24))
        assert chance == pytest.approx(float(log_prob.exp()), rel=1e-4)
    assert policy.answer_distribution.temperature == 0.7  # the measurement leaves the policy as it was
    colder = module.oracle_answer_probabilities(policy, observations[:1], answers[:1], temperature=0.2)
    assert colder[0] != pytest.approx(chances[0], rel=1e-3)
