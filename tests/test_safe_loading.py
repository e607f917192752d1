"""Agent zips are loaded without running code from them, and from any working directory."""

import base64
import json
import os
import shutil
import zipfile
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from vlm_policy import VLMPolicy, make_vlm_vec_env
from vlm_policy.agents import load_agent
from vlm_policy.models.random_models import save_random_llava
from vlm_policy.models.tiny import TinyConfig
from vlm_policy.training import cli

SMALL = TinyConfig(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, heads=2)


class _Payload:
    """Unpickling it creates ``marker``: what a crafted agent file could do with any code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    root = tmp_path_factory.mktemp("agent")
    base = str(save_random_llava(root / "base", config=SMALL))
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=2, model=base, seed=0, max_new_tokens=8)
    model = PPO(VLMPolicy, env, n_steps=4, batch_size=8, n_epochs=1, seed=0,
                policy_kwargs={"model": base, "lora_r": 2, "value_head_layers": (8,), "temperature": 1.0})
    model.learn(8)
    model.save(root / "agent.zip")
    return root / "agent.zip", base, env, model


def _crafted(agent_zip: Path, out: Path, marker: Path) -> Path:
    with zipfile.ZipFile(agent_zip) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(entries["data"])
    data["clip_range"][":serialized:"] = base64.b64encode(cloudpickle.dumps(_Payload(str(marker)))).decode()
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return out


def test_load_agent_runs_no_pickled_code_where_ppo_load_does(agent, tmp_path):
    agent_zip, _, env, _ = agent
    crafted = _crafted(agent_zip, tmp_path / "crafted.zip", tmp_path / "pwned")
    load_agent(crafted, env, device="cpu")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(AssertionError):  # SB3's own loader runs the payload (then chokes on its result)
        PPO.load(crafted, env=env, device="cpu")
    assert (tmp_path / "pwned").exists()  # which is why the README warns against PPO.load of untrusted files


def test_eval_command_reads_a_crafted_agent_safely(agent, tmp_path, capsys):
    agent_zip, _, _, _ = agent
    crafted = _crafted(agent_zip, tmp_path / "crafted.zip", tmp_path / "pwned")
    assert cli.main(["eval", "--model", str(crafted), "--episodes", "2", "--device", "cpu"]) == 0
    assert not (tmp_path / "pwned").exists()
    assert "crafted.zip" in capsys.readouterr().out


def test_safely_loaded_agent_acts_like_the_saved_one(agent):
    agent_zip, _, env, model = agent
    loaded = load_agent(agent_zip, env, device="cpu")
    obs = env.reset()
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    tokens = torch.as_tensor(model.predict(obs, deterministic=True)[0]).float()
    tensors = model.policy.obs_to_tensor(obs)[0]
    with torch.no_grad():
        assert torch.equal(loaded.policy.evaluate_actions(tensors, tokens)[1], model.policy.evaluate_actions(tensors, tokens)[1])


def test_an_agent_of_another_answer_length_is_refused(agent):
    agent_zip, base, _, _ = agent
    other = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=1, model=base, seed=0, max_new_tokens=12)
    with pytest.raises(ValueError, match="8-token answers"):
        load_agent(agent_zip, other, device="cpu")


def test_a_file_that_is_not_an_agent_is_a_clear_error(tmp_path, agent):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable SB3 agent zip"):
        load_agent(tmp_path / "x.zip", agent[2])


def test_agents_from_the_pipeline_name_their_base_by_absolute_path(tmp_path, monkeypatch):
    from vlm_policy.training.pipeline import Pipeline, TrainConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "sft").mkdir(parents=True)
    (tmp_path / "run" / "sft" / "training.json").write_text("{}")  # a finished SFT stage
    sft_dir = Pipeline(TrainConfig.from_settings(out_dir="run", progress=False)).sft.make(demos=None)
    assert os.path.isabs(sft_dir) and Path(sft_dir) == tmp_path / "run" / "sft"


@pytest.mark.slow
def test_the_main_jobs_agent_loads_without_its_sft_directory(tmp_path, monkeypatch):
    from tests.test_main_job import _micro_config
    from vlm_policy.training.pipeline import Pipeline

    monkeypatch.setenv("VLM_CARDS_CACHE", str(tmp_path / "cache"))
    config = _micro_config(tmp_path / "run", ppo_timesteps=8)
    Pipeline(config).run()
    moved = tmp_path / "elsewhere" / "final.zip"
    moved.parent.mkdir()
    shutil.copy(tmp_path / "run" / "ppo" / "final.zip", moved)
    original = load_agent(tmp_path / "run" / "ppo" / "final.zip", _env_for(moved), device="cpu")
    shutil.rmtree(tmp_path / "run")  # the SFT checkpoint the agent was trained from is gone
    monkeypatch.chdir(moved.parent)
    loaded = load_agent(moved, _env_for(moved), device="cpu")
    for (name, a), (_, b) in zip(sorted(original.policy.state_dict().items()), sorted(loaded.policy.state_dict().items())):
        assert torch.equal(a, b), name
    assert cli.main(["eval", "--model", str(moved), "--episodes", "2", "--device", "cpu"]) == 0


def _env_for(agent_zip):
    from vlm_policy.agents import agent_answer_length, agent_base, read_agent_data
    from vlm_policy.training.evaluation import eval_env_factory

    data = read_agent_data(agent_zip)
    return eval_env_factory("gym_cards/NumberLine-v0", agent_base(agent_zip, data), agent_answer_length(data))()


def test_a_missing_base_is_named(agent, tmp_path):
    agent_zip, _, env, _ = agent
    data_zip = tmp_path / "moved.zip"
    with zipfile.ZipFile(agent_zip) as source, zipfile.ZipFile(data_zip, "w") as target:
        for name in source.namelist():
            content = source.read(name)
            if name == "data":
                data = json.loads(content)
                data["policy_kwargs"]["model"] = str(tmp_path / "gone")
                content = json.dumps(data).encode()
            target.writestr(name, content)
    with pytest.raises(FileNotFoundError, match="trained from the base model .*gone.*not there"):
        load_agent(data_zip, env, device="cpu")
