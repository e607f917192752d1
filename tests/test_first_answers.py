"""benchmarks/first_answers.py's measure of the room PPO has: how likely sampling is to write the oracle's answer."""

import json

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


def test_sft_reach_scores_the_model_in_memory_as_the_policy_scores_its_saved_checkpoint(tmp_path):
    """``--sft-stop-reach`` scores validation frames on the model being trained (no copy); the numbers must be
    those of the policy PPO will load from the saved checkpoint, on the observations of the same episodes."""
    from vlm_policy.checkpoints import save_sft_checkpoint
    from vlm_policy.distribution import TokenSequenceDistribution
    from vlm_policy.env_bridge import frame_kwargs
    from vlm_policy.loading import load_vlm
    from vlm_policy.training.demos import oracle_episode_examples

    bundle = load_vlm("tiny", seed=3)
    examples = oracle_episode_examples("gym_cards/NumberLine-v0", 2, 200_000,
                                       env_kwargs=frame_kwargs("gym_cards/NumberLine-v0", bundle.processor, {}))
    assert len(examples) >= 2 and all('"action"' in e.answer for e in examples)
    distribution = TokenSequenceDistribution.for_bundle(bundle, temperature=0.7, max_new_tokens=48)
    log_probs = distribution.answer_log_probs([e.image for e in examples], [e.prompt for e in examples],
                                              [e.answer for e in examples], "cpu")
    snapshot = save_sft_checkpoint(bundle, tmp_path / "sft", {})
    policy, _ = make_policy(model=str(snapshot), max_new_tokens=48, cot_weight=1.0, temperature=0.7)
    env = wrapped_env(model=str(snapshot), max_new_tokens=48, image_size=bundle.processor.image_processor.size["height"])
    observation, _ = env.reset(seed=200_000)  # the first frame of the first validation episode
    batch = policy.obs_to_tensor({k: np.stack([v]) for k, v in observation.items()})[0]
    with torch.no_grad():
        _, log_prob, _ = policy.evaluate_actions(batch, answer_tokens(policy, examples[0].answer, 48))
    assert log_probs[0] == pytest.approx(float(log_prob), rel=1e-4)
    assert np.all(log_probs < np.log(0.01))  # a random model: nothing within reach


def test_the_sft_trajectory_script_measures_every_check_without_stopping(tmp_path):
    module = load_script("benchmarks/sft_trajectory.py")
    log = module.main(["--demos", "16", "--sft-steps", "5", "--sft-check-every", "2", "--vision-warmup-steps", "2",
                       "--sft-batch-size", "4", "--sft-check-episodes", "2", "--max-episode-steps", "2", "--out-dir", str(tmp_path / "run"),
                       "--no-progress", "--device", "cpu"])
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4]  # no check at the last step; SFT never stopped
    assert all(set(row) == {"step", "success", "reach"} and 0 <= row["reach"] <= 1 for row in rows)
    assert json.loads((tmp_path / "run" / "sft" / "training.json").read_text())["steps_done"] == 5


def test_wrong_first_answers_are_grouped_most_frequent_first():
    module = _first_answers()
    answers = [("+", "a"), ("-", "b"), ("+", "a"), ("-", "c"), ("+", "a")]
    oracle_actions = ["-", "-", "-", "+", "+"]  # deals 0, 2 and 3 are wrong; deal 4 wrote "a" but moved right
    oracle_texts = ["A", "B", "A", "C", "A"]
    chances = np.array([0.002, 0.9, 0.004, 0.3, 0.5])
    rows = module.wrong_first_answers(answers, oracle_actions, oracle_texts, chances)
    assert rows == [("a", "A", 2, pytest.approx(0.004)), ("c", "C", 1, pytest.approx(0.3))]
    assert module.wrong_first_answers(answers[:2], ["+", "-"], oracle_texts[:2], chances[:2]) == []


def test_oracle_thoughts_count_compares_the_thoughts_alone():
    module = _first_answers()
    oracle = '{"current number": 4, "target number": 3, "thoughts": "4 is larger than 3, so I subtract one.", "action": "-"}'
    answers = [
        ("-", oracle),  # the oracle's answer
        ("-", '{"thoughts": " 4 is larger than 3, so I subtract one. ", "action": "-"}'),  # same thoughts, trimmed
        ("-", '{"thoughts": "4 is smaller than 0, so I add one.", "action": "-"}'),  # right move, wrong thoughts
        (None, "not json"),
        (None, '["a list"]'),
    ]
    assert module.thoughts_of(answers[3][1]) is None and module.thoughts_of(answers[4][1]) is None
    assert module.oracle_thoughts_count(answers, [oracle] * len(answers)) == 2
    assert module.oracle_thoughts_count(answers[:1], ['{"action": "-"}']) == 0  # the oracle wrote no thoughts
