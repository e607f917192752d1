"""Legal-action decoding (vlm_policy.legal_actions): answers name legal actions, and the update scores
exactly the distribution that sampled them."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import alfworld_bridge  # noqa: F401  (registers alfworld/ALFWorld-v0)
from gym_vlm_cards.parsing import read_action
from tests.policy_helpers import batch_obs, make_policy
from vlm_policy import VLMPolicy, make_vlm_vec_env
from vlm_policy.env_bridge import decode_legal_actions, encode_legal_actions
from vlm_policy.legal_actions import LegalActionMasks
from vlm_policy.loading import load_processor
from vlm_policy.models.random_models import SAVERS

SAMPLE = Path(__file__).resolve().parent / "data" / "alfworld"
LEGAL = ["go to fridge 1", "go to cabinet 2", "open fridge 1", "look"]
OPENING = '{"action": "'  # one token of the tiny tokenizers: the value opens with it


@pytest.fixture(scope="module")
def masks():
    tokenizer = load_processor("tiny").tokenizer
    return tokenizer, LegalActionMasks.for_tokenizer(tokenizer, len(tokenizer))


def test_inside_a_value_only_continuations_and_closings_of_legal_actions_are_allowed(masks):
    tokenizer, rule = masks
    ids = tokenizer('{"thoughts": "x", "action": "go to fridge 1"}', add_special_tokens=False).input_ids
    assert rule.text(ids) == '{"thoughts": "x", "action": "go to fridge 1"}'
    text, inside = "", 0
    for position, token in enumerate(ids):
        mask = rule.allowed(ids[:position], LEGAL, 32)
        value = rule.open_value(text)
        if value is not None:
            inside += 1
            only, allowed = mask
            assert only and token in allowed.tolist()
            for piece in (rule.pieces[i] for i in allowed.tolist()):  # each continues or closes a legal action
                if '"' in piece:
                    assert value + piece.split('"', 1)[0] in LEGAL
                else:
                    assert any(action.startswith(value + piece) for action in LEGAL)
        elif mask is not None:  # outside a value only openings are ever barred, never the answer's own token
            assert not mask[0] and token not in mask[1].tolist()
        text += rule.pieces[token]
    after = rule.allowed(ids, LEGAL, 32)  # the value closed: free again, but for openings of illegal values
    assert inside >= 3 and (after is None or not after[0])
    # No legal action starts with what was written: nothing is masked (the env judges the answer).
    assert rule.allowed(tokenizer('{"action": "xyz', add_special_tokens=False).input_ids, LEGAL, 32) is None
    assert rule.allowed(ids[:-1], [], 32) is None


def test_a_value_opens_and_goes_on_only_where_a_legal_action_fits_in_the_budget(masks):
    tokenizer, rule = masks
    opening = tokenizer.convert_tokens_to_ids(tokenizer.tokenize('{"action": "'))
    start = tokenizer('{"thoughts": "x"', add_special_tokens=False).input_ids
    cost = min(rule.finish_cost(action) for action in LEGAL)
    assert 1 <= cost < 1 << 30
    # With room for the shortest legal action after it, the opening may come; with one token less, not.
    assert rule.allowed(start, LEGAL, cost + 1) is None or opening[0] not in rule.allowed(start, LEGAL, cost + 1)[1]
    only, barred = rule.allowed(start, LEGAL, cost)
    assert not only and opening[0] in barred.tolist()
    # Inside a value, a continuation that could not be closed in time is not offered.
    inside = tokenizer('{"action": "go', add_special_tokens=False).input_ids
    _, tight = rule.allowed(inside, ["go to fridge 1"], rule.finish_cost(" to fridge 1"))
    _, roomy = rule.allowed(inside, ["go to fridge 1"], 32)
    assert set(tight.tolist()) < set(roomy.tolist())


def test_the_masks_of_a_whole_answer_are_those_of_each_step(masks):
    tokenizer, rule = masks
    ids = tokenizer('{"action": "open fridge 1"}', add_special_tokens=False).input_ids
    tokens = torch.tensor([ids, ids])
    whole = rule.apply(torch.zeros(2, len(ids), len(tokenizer)), tokens, [LEGAL, ["look"]], budget=24)
    for position in range(len(ids)):
        step = rule.apply_step(torch.zeros(2, len(tokenizer)), tokens[:, :position], [LEGAL, ["look"]], budget=24)
        assert torch.equal(whole[:, position], step)
    assert torch.isinf(whole[1, 1]).sum() == len(tokenizer) - len(rule.allowed(ids[:1], ["look"], 23)[1])


def test_legal_actions_travel_as_json_bytes_and_too_many_are_an_error():
    buffer = encode_legal_actions(["go to fridge 1", "take apple 1 from table 2"], 64)
    assert buffer.shape == (64,) and decode_legal_actions(buffer) == ["go to fridge 1", "take apple 1 from table 2"]
    assert decode_legal_actions(encode_legal_actions([], 8)) == []
    with pytest.raises(ValueError, match="more than max_legal_bytes=16"):
        encode_legal_actions(LEGAL, 16)


def _opening_made_likely(policy, boost: float = 6.0) -> None:
    """The value-opening token made likely at every position (a change of the model itself, so generation
    and scoring both see it): the random models then write many action values."""
    opening = policy.bundle.tokenizer.convert_tokens_to_ids(policy.bundle.tokenizer.tokenize(OPENING))
    assert len(opening) == 1

    def boosted(module, inputs, output):
        output = output.clone()
        output[..., opening[0]] += boost
        return output

    policy.bundle.model.get_output_embeddings().register_forward_hook(boosted)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_constrained_sampling_is_the_scored_distribution_and_names_legal_actions(family, tmp_path):
    path = str(SAVERS[family](tmp_path / family))
    policy, _ = make_policy(path, max_new_tokens=24, temperature=1.0, lora_r=4)
    _opening_made_likely(policy)
    prompts = ["p"] * 8
    obs = batch_obs(policy, prompts=prompts)
    images, texts = policy._unpack(obs)
    legal = [LEGAL if row % 2 else ["look", "open fridge 1"] for row in range(len(prompts))]
    distribution = policy.answer_distribution
    torch.manual_seed(0)
    sampled = distribution.sample(images, texts, policy.device, legal=legal)
    scored = distribution.score(images, texts, sampled.tokens, policy.device, legal=legal)
    # fp32: the rollout's and the update's log-probabilities agree per answer (sums of ~24 tokens).
    assert torch.allclose(sampled.log_prob(0.5), scored.log_prob(0.5), atol=1e-4, rtol=0)
    assert torch.isfinite(scored.per_token).all()  # every sampled token is one the masks allow
    values = 0
    rule = distribution.legal_masks()
    for row, tokens in enumerate(sampled.tokens.tolist()):
        text = rule.text(tokens)
        for closed in __import__("re").finditer(r'"action"\s*:\s*"([^"]*)"', text):
            assert closed.group(1) in legal[row], (text, legal[row])
            values += 1
    assert values >= 8  # the constraint was exercised
    # Unconstrained scoring of the same answers differs: the masks are part of the distribution.
    free = distribution.score(images, texts, sampled.tokens, policy.device)
    assert not torch.allclose(free.log_prob(0.5), scored.log_prob(0.5))


def test_a_random_tiny_policy_plays_only_admissible_commands_on_alfworld():
    # On by default on ALFWorld: the env carries the admissible commands, and the policy then decodes among them.
    env = make_vlm_vec_env("alfworld/ALFWorld-v0", n_envs=2, model="tiny", seed=0, max_new_tokens=32,
                           env_kwargs={"data_root": str(SAMPLE), "split": "train"})
    policy = VLMPolicy(env.observation_space, env.action_space, lambda _: 1e-4, model="tiny", temperature=1.0,
                       device="cpu")
    assert policy.constrain_actions
    _opening_made_likely(policy)
    obs = env.reset()
    named = admissible = 0
    for _ in range(6):
        legal = [decode_legal_actions(row) for row in obs["legal_actions"]]
        assert all(legal)  # each env's admissible commands, as its info has them
        actions, _ = policy.predict(obs, deterministic=False)
        obs, _, _, infos = env.step(actions)
        for info, commands in zip(infos, legal):
            action = read_action(info["generated_text"]).value
            if action is not None:
                named += 1
                admissible += action in commands
    assert named >= 6 and admissible == named
    env.close()


def test_a_constraining_policy_needs_the_legal_actions_in_its_observations():
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=1, model="tiny", max_new_tokens=8)
    assert "legal_actions" not in env.observation_space.spaces  # off by default on the card tasks
    assert not VLMPolicy(env.observation_space, env.action_space, lambda _: 1e-4, model="tiny").constrain_actions
    with pytest.raises(ValueError, match=r"make_vlm_vec_env\(\.\.\., constrain_actions=True\)"):
        VLMPolicy(env.observation_space, env.action_space, lambda _: 1e-4, model="tiny", constrain_actions=True)
    constrained = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=1, model="tiny", max_new_tokens=8,
                                   constrain_actions=True)
    obs = constrained.reset()
    assert decode_legal_actions(obs["legal_actions"][0]) == list(gym.make("gym_cards/NumberLine-v0").unwrapped.legal_actions)
    assert json.loads(bytes(np.asarray(obs["legal_actions"][0], dtype=np.uint8)).rstrip(b"\x00")) == ["-", "+"]


def test_ppo_trains_a_constraining_policy_and_its_rollout_log_probs_are_the_updates(tmp_path):
    from stable_baselines3 import PPO

    from vlm_policy.agents import load_agent

    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=2, model="tiny", seed=0, max_new_tokens=24,
                           constrain_actions=True)
    model = PPO(VLMPolicy, env, n_steps=4, batch_size=8, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"model": "tiny", "temperature": 1.0, "constrain_actions": True})
    _opening_made_likely(model.policy)
    obs = model.env.reset()
    tensors = {key: torch.as_tensor(value) for key, value in obs.items()}
    with torch.no_grad():
        tokens, _, rollout = model.policy(tensors)
        _, update, _ = model.policy.evaluate_actions(tensors, tokens.float())
    assert torch.allclose(rollout, update, atol=1e-4, rtol=0)
    model.learn(8)
    model.save(tmp_path / "agent")
    loaded = load_agent(tmp_path / "agent.zip", env, device="cpu")
    assert loaded.policy.constrain_actions  # saved with the agent, read back without unpickling
