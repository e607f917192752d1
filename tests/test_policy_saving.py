import zipfile

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from tests.policy_helpers import batch_obs, make_policy
from vlm_policy import VLMPolicy, make_vlm_vec_env
from vlm_policy.defaults import SHARED_DEFAULTS_KEY
from vlm_policy.models.random_models import save_random_llava


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return str(save_random_llava(tmp_path_factory.mktemp("base") / "llava", seed=3))


def _train(model_ref, tmp_path, **policy_kwargs):
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=2, model=model_ref, seed=0, max_new_tokens=12)
    model = PPO(VLMPolicy, env, n_steps=4, batch_size=8, n_epochs=1, learning_rate=1e-3,
                policy_kwargs={"model": model_ref, "temperature": 1.0, **policy_kwargs})
    model.learn(8)
    return env, model


def _greedy(model, env):
    env.seed(123)  # the same observations for every model compared (an unseeded reset moves on)
    obs = env.reset()
    return model.predict(obs, deterministic=True)[0]


def test_agent_on_a_real_checkpoint_saves_only_what_training_changed(llava_dir, tmp_path):
    env, model = _train(llava_dir, tmp_path, lora_r=4)
    model.save(tmp_path / "agent")
    with zipfile.ZipFile(tmp_path / "agent.zip") as archive:
        state = torch.load(archive.open("policy.pth"), weights_only=True)
    # LoRA factors, the value head, and two markers (the LoRA alpha and the shared-defaults flag)
    assert state and all("lora_" in key or key.startswith("value_head.") or key == SHARED_DEFAULTS_KEY
                         for key in state)
    base_numel = sum(p.numel() for n, p in model.policy.vlm.named_parameters() if "lora_" not in n)
    assert sum(t.numel() for t in state.values()) < base_numel
    loaded = PPO.load(tmp_path / "agent", env=env)
    assert loaded.policy.model_source == llava_dir
    assert np.array_equal(_greedy(model, env), _greedy(loaded, env))


def test_tiny_agent_round_trips_exactly_including_its_random_base(tmp_path):
    env, model = _train("tiny", tmp_path, lora_r=4, seed=5)
    model.save(tmp_path / "agent")
    loaded = PPO.load(tmp_path / "agent", env=env)
    for (name, a), (_, b) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items()):
        assert torch.equal(a, b), name
    assert np.array_equal(_greedy(model, env), _greedy(loaded, env))


def test_policy_kwargs_hold_no_model_objects(tmp_path):
    env, model = _train("tiny", tmp_path)
    for value in model.policy_kwargs.values():
        assert isinstance(value, (str, int, float, bool, type(None), list, tuple, dict))


def test_save_pretrained_writes_a_peft_adapter_and_value_head_that_load_back(llava_dir, tmp_path):
    policy, _ = make_policy(llava_dir, lora_r=4)
    with torch.no_grad():
        for name, parameter in policy.vlm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # make the adapter matter
        next(policy.value_head.parameters()).add_(1.0)
    out = policy.save_pretrained(tmp_path / "saved")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "value_head.safetensors").is_file()
    fresh, _ = make_policy(llava_dir, lora_r=4)
    obs = batch_obs(policy)
    with torch.no_grad():
        assert not torch.equal(policy(obs, deterministic=True)[1], fresh(obs, deterministic=True)[1])
        fresh.load_pretrained(out)
        tokens, values, _ = policy(obs, deterministic=True)
        tokens_again, values_again, _ = fresh(obs, deterministic=True)
    assert torch.equal(tokens, tokens_again) and torch.allclose(values, values_again)


def test_adapter_merges_into_the_base_for_serving_elsewhere(llava_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    policy, _ = make_policy(llava_dir, lora_r=4)
    with torch.no_grad():
        for name, parameter in policy.vlm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    policy.save_pretrained(tmp_path / "saved")
    base = AutoModelForImageTextToText.from_pretrained(llava_dir)
    merged = PeftModel.from_pretrained(base, tmp_path / "saved" / "adapter").merge_and_unload()
    obs = batch_obs(policy)
    from vlm_policy.prompting import build_inputs
    images, prompts = policy._unpack(obs)
    inputs = build_inputs(policy.bundle, images, prompts)
    with torch.no_grad():
        expected = policy.vlm(**inputs).logits[:, -1]
        actual = merged(**inputs).logits[:, -1]
    assert torch.allclose(expected, actual, atol=1e-4)


def test_loading_a_checkpoint_of_another_shape_is_an_error(llava_dir, tmp_path):
    env, model = _train(llava_dir, tmp_path, lora_r=4)
    model.save(tmp_path / "agent")
    with pytest.raises(RuntimeError, match="does not match"):
        PPO.load(tmp_path / "agent", env=env, custom_objects={"policy_kwargs": {**model.policy_kwargs, "lora_r": 8}})


def test_an_agent_of_the_first_tiny_version_loads_as_tiny_v1(tmp_path):
    from vlm_policy.agents import agent_base, load_agent, read_agent_data
    from vlm_policy.models.tiny import tiny_vocabulary

    # As version 1 saved them: model="tiny", a 440-token vocabulary.
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=2, model="tiny-v1", seed=0, max_new_tokens=12)
    model = PPO(VLMPolicy, env, n_steps=4, batch_size=8, n_epochs=1, policy_kwargs={"model": "tiny"})
    assert len(model.policy.bundle.tokenizer) == len(tiny_vocabulary(1)) == 440 < len(tiny_vocabulary())
    model.save(tmp_path / "old_agent")
    data = read_agent_data(tmp_path / "old_agent.zip")
    assert data["policy_kwargs"]["model"] == "tiny" and agent_base(tmp_path / "old_agent.zip", data) == "tiny-v1"
    loaded = load_agent(tmp_path / "old_agent.zip", env)
    for (name, a), (_, b) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items()):
        assert torch.equal(a, b), name
    assert np.array_equal(_greedy(model, env), _greedy(loaded, env))


def test_version_2_spells_a_task_prompt_in_a_handful_of_tokens_and_keeps_every_version_1_id():
    from vlm_policy.loading import load_processor

    old, new = load_processor("tiny-v1").tokenizer, load_processor("tiny").tokenizer
    assert old.get_vocab().items() <= new.get_vocab().items()
    import gymnasium as gym

    prompt = gym.make("gym_cards/NumberLine-v0").unwrapped.prompt
    assert len(new(prompt).input_ids) <= 6 < 80 < len(old(prompt).input_ids)
