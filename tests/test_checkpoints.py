"""PPO checkpoints on disk: only the newest are kept, and --resume finds the latest."""

import pytest
from stable_baselines3 import PPO

from vlm_policy.training.callbacks import RotatingCheckpointCallback, saved_checkpoints
from vlm_policy.training.pipeline import latest_checkpoint


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, n_epochs=1, seed=0)
    model.learn(48, callback=RotatingCheckpointCallback(save_freq=8, save_path=str(tmp_path), keep=2))
    assert [p.name for p in saved_checkpoints(tmp_path)] == ["rl_model_40_steps.zip", "rl_model_48_steps.zip"]
    assert PPO.load(latest_checkpoint(tmp_path)).num_timesteps == 48


def test_keep_zero_keeps_every_checkpoint(tmp_path):
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, n_epochs=1, seed=0)
    model.learn(32, callback=RotatingCheckpointCallback(save_freq=8, save_path=str(tmp_path), keep=0))
    assert len(saved_checkpoints(tmp_path)) == 4


def test_checkpoints_sort_by_timesteps_not_by_name(tmp_path):
    for steps in (512, 1024, 96):
        (tmp_path / f"rl_model_{steps}_steps.zip").touch()
    (tmp_path / "rl_model_final.zip").touch()
    assert [p.name for p in saved_checkpoints(tmp_path)] == [
        "rl_model_96_steps.zip", "rl_model_512_steps.zip", "rl_model_1024_steps.zip"]
    assert latest_checkpoint(tmp_path).name == "rl_model_1024_steps.zip"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_negative_keep_is_refused(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        RotatingCheckpointCallback(save_freq=8, save_path=str(tmp_path), keep=-1)
