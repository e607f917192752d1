"""Agents saved before the package was split into core / models / training still load and act the same.

``tests/data/legacy_agent/`` was written by ``make_legacy.py`` with the flat layout (commit 29e1bbd):
SB3 pickles the policy's class path (``vlm_policy.policy.VLMPolicy``) and the learning-rate schedule
into every agent zip, so both must keep resolving.
"""

import shutil
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO

from vlm_policy.models.random_models import save_random_llava
from vlm_policy.models.tiny import TinyConfig

DATA = Path(__file__).parent / "data" / "legacy_agent"
SMALL = TinyConfig(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, heads=2)


def test_an_agent_saved_before_the_move_loads_and_acts_identically(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_random_llava("legacy_base", seed=0, config=SMALL)  # the base the zip names, rebuilt from its seed
    shutil.copy(DATA / "legacy_agent.zip", tmp_path)
    model = PPO.load("legacy_agent.zip", device="cpu")
    assert type(model.policy).__module__ == "vlm_policy.policy"
    obs = dict(np.load(DATA / "legacy_obs.npz"))
    expected = np.load(DATA / "legacy_expected.npz")
    actions, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actions, expected["actions"])
    tensors = model.policy.obs_to_tensor(obs)[0]
    with torch.no_grad():
        values = model.policy.predict_values(tensors).numpy()
        _, log_prob, _ = model.policy.evaluate_actions(tensors, torch.as_tensor(expected["tokens"]))
    np.testing.assert_allclose(values, expected["values"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(log_prob.numpy(), expected["log_prob"], rtol=1e-4, atol=1e-4)
    assert model.learning_rate(1.0) == 1e-3  # the pickled cosine schedule still runs


def test_a_removed_setting_at_its_kept_value_is_dropped_and_at_another_is_refused():
    import pytest

    from vlm_policy.agents import without_removed_settings

    assert without_removed_settings({"model": "m", "value_input": "prompt"}, "a.zip") == {"model": "m"}
    with pytest.raises(ValueError, match="value_input='prompt\\+image'"):
        without_removed_settings({"model": "m", "value_input": "prompt+image"}, "a.zip")
