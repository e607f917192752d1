import math

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from tests.policy_helpers import PROMPTS, answer_tokens, batch_obs, make_policy, wrapped_env
from vlm_policy import VLMPolicy, make_vlm_vec_env
from vlm_policy.adapters import is_vision_module
from vlm_policy.models.random_models import SAVERS

FAMILIES = sorted(SAVERS)  # llava, llava_next, qwen2_vl, qwen2_5_vl, qwen3_vl, idefics3, smolvlm, gemma3


@pytest.fixture(scope="module")
def random_checkpoints(tmp_path_factory):
    """Tiny random models of every supported family, saved and loaded by path like real checkpoints."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: str(save(root / family)) for family, save in SAVERS.items()}


@pytest.mark.slow
def test_plain_ppo_with_vlm_policy_trains_saves_and_loads_on_cpu(tmp_path):
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=2, model="tiny", seed=0, max_new_tokens=32)
    model = PPO(VLMPolicy, env, n_steps=8, batch_size=8, n_epochs=1, policy_kwargs={"model": "tiny"})
    model.learn(32)
    model.save(tmp_path / "agent")
    loaded = PPO.load(tmp_path / "agent", env=env)
    assert model.num_timesteps == 32 and model._n_updates == 2
    obs = env.reset()
    first, _ = model.predict(obs, deterministic=True)
    again, _ = loaded.predict(obs, deterministic=True)
    assert np.array_equal(first, again)


@pytest.mark.parametrize("family", FAMILIES)
def test_rollout_log_probs_equal_teacher_forced_ones(family, random_checkpoints):
    policy, _ = make_policy(random_checkpoints[family], temperature=1.0)
    obs = batch_obs(policy)
    with torch.no_grad():
        tokens, values, log_prob = policy(obs)
        values_again, log_prob_again, entropy = policy.evaluate_actions(obs, tokens.float())
    assert torch.allclose(log_prob, log_prob_again, atol=1e-4, rtol=0)
    assert torch.allclose(values, values_again, atol=1e-5)
    assert (entropy > 0).all()


@pytest.mark.parametrize("family", ["qwen3_vl", "gemma3", "smolvlm"])
def test_newer_families_train_a_ppo_update_and_save_and_load(family, random_checkpoints, tmp_path):
    path = random_checkpoints[family]
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=2, model=path, seed=0, max_new_tokens=8)
    model = PPO(VLMPolicy, env, n_steps=2, batch_size=4, n_epochs=1, learning_rate=1e-2,
                policy_kwargs={"model": path, "lora_r": 4, "temperature": 1.0})
    adapter = {n: p.detach().clone() for n, p in model.policy.vlm.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in adapter) and any(is_vision_module(n) for n in adapter)  # vision side found
    model.learn(4)
    assert any(not torch.equal(p, adapter[n]) for n, p in model.policy.vlm.named_parameters() if n in adapter)
    model.save(tmp_path / "agent")
    loaded = PPO.load(tmp_path / "agent", env=env)
    for (name, a), (_, b) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items()):
        assert torch.equal(a, b), name
    env.seed(3)
    obs = env.reset()
    assert np.array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_log_probs_do_not_depend_on_padding_or_batch_mates(family, random_checkpoints):
    policy, _ = make_policy(random_checkpoints[family], temperature=1.0)
    obs = batch_obs(policy)
    with torch.no_grad():
        tokens, _, _ = policy(obs)
        together = policy.evaluate_actions(obs, tokens.float())[1]
        alone = [policy.evaluate_actions({k: v[i : i + 1] for k, v in obs.items()}, tokens[i : i + 1].float())[1]
                 for i in range(len(PROMPTS))]
        reordered = policy.evaluate_actions({k: v.flip(0) for k, v in obs.items()}, tokens.flip(0).float())[1].flip(0)
    assert torch.allclose(together, torch.cat(alone), atol=1e-4, rtol=0)
    assert torch.allclose(together, reordered, atol=1e-4, rtol=0)


def test_first_ppo_ratio_is_one_so_nothing_is_clipped(tmp_path):
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=2, model="tiny", seed=1, max_new_tokens=24)
    model = PPO(VLMPolicy, env, n_steps=4, batch_size=8, n_epochs=2, learning_rate=0.0, clip_range=1e-3,
                policy_kwargs={"model": "tiny", "temperature": 1.0})
    model.learn(8)
    logged = model.logger.name_to_value
    assert logged["train/clip_fraction"] == 0.0  # every ratio within 1 +- 1e-3 at a clip range of 1e-3
    assert abs(logged["train/approx_kl"]) < 1e-5


def test_cot_weight_scales_only_the_thought_tokens():
    answer = '{"current number": 2, "target number": 5, "thoughts": "2 is smaller than 5, so I add one.", "action": "+"}'
    results = {}
    for weight in (0.0, 0.5, 1.0):
        policy, _ = make_policy(max_new_tokens=32, cot_weight=weight)
        obs = batch_obs(policy, prompts=["prompt"])
        with torch.no_grad():
            results[weight] = policy.evaluate_actions(obs, answer_tokens(policy, answer, 32))[1].item()
    thought_part = results[1.0] - results[0.0]
    assert thought_part < -1.0  # the thoughts carry real (negative) log-probability
    assert results[0.5] == pytest.approx(results[0.0] + 0.5 * thought_part, abs=1e-4)


def test_tokens_after_the_end_token_do_not_count():
    policy, _ = make_policy(max_new_tokens=24)
    obs = batch_obs(policy, prompts=["prompt"])
    tokens = answer_tokens(policy, '{"action": "+"}', 24)
    noisy = tokens.clone()
    end = int((tokens[0] == policy.end_ids[0]).nonzero()[0])
    noisy[0, end + 1 :] = torch.randint(10, 300, (24 - end - 1,)).float()
    with torch.no_grad():
        assert policy.evaluate_actions(obs, tokens)[1].item() == pytest.approx(policy.evaluate_actions(obs, noisy)[1].item(), abs=1e-5)


def test_special_and_image_tokens_are_never_sampled():
    policy, _ = make_policy(max_new_tokens=32, temperature=5.0)
    obs = batch_obs(policy, prompts=["p"] * 8)
    banned = set(torch.nonzero(policy.banned_tokens).flatten().tolist())
    tokenizer = policy.bundle.tokenizer
    assert tokenizer.convert_tokens_to_ids("<image>") in banned and tokenizer.pad_token_id in banned
    assert policy.end_ids[0] not in banned
    from vlm_policy.logprobs import valid_mask

    with torch.no_grad():
        tokens, _, _ = policy(obs)
    sampled = tokens[valid_mask(tokens, policy.end_ids)]  # after an answer ends, generate() only pads
    assert sampled.numel() > 32 and not banned & set(sampled.tolist())


def test_greedy_decoding_is_deterministic():
    policy, _ = make_policy()
    obs = batch_obs(policy)
    with torch.no_grad():
        first = policy(obs, deterministic=True)[0]
        second = policy(obs, deterministic=True)[0]
    assert torch.equal(first, second)


def test_optimizer_holds_only_lora_and_value_head_parameters():
    policy, _ = make_policy(lora_r=4, value_lr_scale=3.0, train_vision=False)
    in_optimizer = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in policy.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("value_head.") for n in names)
    assert not any("vision_tower" in n for n in names)  # language model only when asked
    assert policy.optimizer.param_groups[1]["lr_scale"] == 3.0


def test_train_vision_adds_lora_to_the_vision_tower():
    policy, _ = make_policy(lora_r=4, train_vision=True)
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert any("vision_tower" in n and "lora_" in n for n in names)


def test_value_head_learning_rate_scale_applies_at_step_time():
    policy, _ = make_policy(lora_r=4, value_lr_scale=0.0, lr=1e-2)
    obs = batch_obs(policy, prompts=["p"])
    head_before = [p.clone() for p in policy.value_head.parameters()]
    lora_before = [p.clone() for n, p in policy.vlm.named_parameters() if "lora_B" in n]
    tokens = answer_tokens(policy, '{"action": "+"}', 16)
    values, log_prob, _ = policy.evaluate_actions(obs, tokens)
    (values.sum() - log_prob.sum()).backward()
    policy.optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(head_before, policy.value_head.parameters()))
    lora_after = [p for n, p in policy.vlm.named_parameters() if "lora_B" in n]
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, lora_after))
    assert policy.optimizer.param_groups[1]["lr"] == 1e-2  # SB3's value restored after the step


def test_full_training_with_lora_rank_zero():
    policy, _ = make_policy(lora_r=0, train_vision=False)
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert any("language_model" in n for n in names) and not any("vision_tower" in n for n in names)


def test_unknown_model_path_is_an_error_naming_it(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        make_policy(missing)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        make_vlm_vec_env("gym_cards/NumberLine-v0", model=missing)


def test_a_model_object_is_refused():
    env = wrapped_env()
    with pytest.raises(TypeError, match="str"):
        VLMPolicy(env.observation_space, env.action_space, lambda _: 1e-4, model=object())


def test_env_and_policy_tokenizers_must_match(random_checkpoints):
    env = wrapped_env("tiny")
    with pytest.raises(ValueError, match="tokenizer"):
        VLMPolicy(env.observation_space, env.action_space, lambda _: 1e-4, model=random_checkpoints["qwen2_vl"])


def test_bad_observations_say_what_was_expected():
    policy, _ = make_policy()
    obs = batch_obs(policy)
    with pytest.raises(ValueError, match=r"\(batch, H, W, 3\)"):
        policy({**obs, "image": obs["image"][..., :2]})
    with pytest.raises(ValueError, match="dict observations"):
        policy(obs["image"])
    with pytest.raises(ValueError, match="MultiDiscrete"):
        import gymnasium as gym
        VLMPolicy(gym.spaces.Box(0, 255, (64, 64, 3)), gym.spaces.Discrete(2), lambda _: 1e-4)


def test_nan_in_training_stops_with_a_clear_error():
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=2, model="tiny", seed=0, max_new_tokens=8)
    model = PPO(VLMPolicy, env, n_steps=4, batch_size=8, n_epochs=1, policy_kwargs={"model": "tiny"})
    with torch.no_grad():
        next(model.policy.value_head.parameters()).fill_(math.nan)
    with pytest.raises(FloatingPointError, match="non-finite"):
        model.learn(8)


def test_prompts_too_long_for_the_observation_are_an_error():
    from vlm_policy.env_bridge import encode_prompt

    with pytest.raises(ValueError, match="max_prompt_bytes"):
        encode_prompt("x" * 100, 10)


def test_decoded_action_text_reaches_the_env():
    env = wrapped_env(max_new_tokens=24)
    env.reset(seed=0)
    tokenizer = env.tokenizer
    ids = tokenizer('{"thoughts": "go", "action": "+"}', add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    ids += [7] * (24 - len(ids))  # garbage after the end token is ignored
    _, _, _, _, info = env.step(np.array(ids, dtype=np.float32))
    assert info["generated_text"] == '{"thoughts": "go", "action": "+"}'
    assert info["parsed_action"] == "+"


def test_gradient_checkpointing_gives_the_same_log_probs_and_trains():
    plain, _ = make_policy(lora_r=4, temperature=1.0)
    checkpointed, _ = make_policy(lora_r=4, temperature=1.0, gradient_checkpointing=True)
    obs = batch_obs(plain, prompts=["p", "a longer prompt"])
    with torch.no_grad():
        tokens, _, rollout = checkpointed(obs)
    checkpointed.set_training_mode(True)  # checkpointing is active in train mode only
    assert checkpointed.vlm.training
    values, log_prob, _ = checkpointed.evaluate_actions(obs, tokens.float())
    assert torch.allclose(log_prob.detach(), rollout, atol=1e-4)
    (-(log_prob.sum()) + values.sum()).backward()
    grads = [p.grad for n, p in checkpointed.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_evaluation_results_do_not_depend_on_how_many_episodes_step_together():
    """--eval-batch is a speed setting (not part of the stage records): each episode's greedy answers are its own."""
    import gymnasium as gym

    from vlm_policy.env_bridge import TokenActionWrapper
    from vlm_policy.loading import load_processor
    from vlm_policy.training.evaluation import evaluate_vlm

    policy, _ = make_policy(max_new_tokens=12)
    tokenizer = load_processor("tiny").tokenizer

    def make_env():
        env = gym.make("gym_cards/NumberLine-v0", image_size=64, max_episode_steps=3)
        return TokenActionWrapper(env, tokenizer, max_new_tokens=12)

    ends = {}
    for at_once in (1, 5):
        ends[at_once] = []
        result, _ = evaluate_vlm(policy, make_env, 5, seed=7, parallel=at_once, episode_ends=ends[at_once])
        ends[at_once] = (result, sorted((e.index, e.episode_return, e.length) for e in ends[at_once]))
    assert ends[1] == ends[5]
    assert ends[1][0].episodes == 5


def test_answer_returns_the_greedy_answers_as_text():
    import gymnasium as gym

    policy, env = make_policy(max_new_tokens=12)
    frames = [gym.make("gym_cards/NumberLine-v0", image_size=64).reset(seed=seed) for seed in (0, 1)]
    images, prompts = [image for image, _ in frames], [info["prompt"] for _, info in frames]
    texts = policy.answer(images, prompts)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    tokens = policy.answer_distribution.generate(images, prompts, policy.device, deterministic=True)
    assert texts == [env.decode(row.numpy().astype(np.float32)) for row in tokens]
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        policy.answer(images, prompts[:1])


def test_an_evaluation_keeps_a_won_and_a_lost_episode_for_the_strip(tmp_path):
    """Always answering "+" wins the NumberLine episodes whose target lies to the right and loses the others."""
    from vlm_policy.loading import load_processor
    from vlm_policy.training.evaluation import eval_env_factory, evaluate_vlm
    from vlm_policy.training.plots import plot_episode_strip

    tokenizer = load_processor("tiny").tokenizer
    ids = tokenizer('{"action": "+"}', add_special_tokens=False).input_ids + [tokenizer.eos_token_id] * 12

    class AlwaysPlus:
        def __call__(self, batch, deterministic=True):
            rows = len(batch["image"])
            return torch.tensor([ids[:12]] * rows), None, None

    make = eval_env_factory("gym_cards/NumberLine-v0", "tiny", 12, "cot", {"max_episode_steps": 5})
    examples, ends = {}, []
    result, _ = evaluate_vlm(AlwaysPlus(), make, 12, seed=0, parallel=4, examples=examples, episode_ends=ends)
    assert 0 < result.success_rate < 1 and set(examples) == {True, False}
    first_won = min(end.index for end in ends if end.success)
    assert examples[True].success and len(examples[True].answers) == ends[first_won].length
    assert not examples[False].success and all(a == '{"action": "+"}' for a in examples[False].answers)
    assert len(examples[True].frames) == len(examples[True].answers) + 1  # the last frame, after the last step
    assert plot_episode_strip([examples[True], examples[False]], tmp_path / "strip.png").stat().st_size > 0
