"""PPO checkpoints on disk: written after the update they follow, atomically, only the newest of
this run kept, and --resume takes the newest that loads."""

import pytest
from stable_baselines3 import PPO

from vlm_policy.training.callbacks import UpdateCheckpointCallback, saved_checkpoints
from vlm_policy.training.pipeline import latest_checkpoint


def _ppo():
    return PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, n_epochs=1, seed=0)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model = _ppo()
    model.learn(48, callback=UpdateCheckpointCallback(tmp_path, keep=2))
    assert [p.name for p in saved_checkpoints(tmp_path)] == ["rl_model_40_steps.zip", "rl_model_48_steps.zip"]
    assert PPO.load(latest_checkpoint(tmp_path)).num_timesteps == 48
    assert not list(tmp_path.glob(".partial-*"))


def test_keep_zero_keeps_every_checkpoint(tmp_path):
    _ppo().learn(32, callback=UpdateCheckpointCallback(tmp_path, keep=0))
    assert [p.name for p in saved_checkpoints(tmp_path)] == [f"rl_model_{n}_steps.zip" for n in (8, 16, 24, 32)]


def test_a_checkpoint_holds_every_update_of_its_steps_so_a_resume_makes_each_once(tmp_path):
    whole = _ppo()
    whole.learn(32)
    _ppo().learn(32, callback=UpdateCheckpointCallback(tmp_path, keep=0))
    resumed = PPO.load(tmp_path / "rl_model_16_steps.zip", env=whole.get_env())  # as if killed after 16 steps
    assert resumed._n_updates == 2  # the checkpoint at 16 steps followed the update on them
    resumed.learn(32 - resumed.num_timesteps, reset_num_timesteps=False)
    assert (resumed.num_timesteps, resumed._n_updates) == (32, whole._n_updates) == (32, 4)


def test_leftover_checkpoints_of_another_run_are_neither_deleted_nor_delete_ours(tmp_path):
    for steps in (1000, 2000, 3000):
        (tmp_path / f"rl_model_{steps}_steps.zip").write_bytes(b"an older run's")
    _ppo().learn(32, callback=UpdateCheckpointCallback(tmp_path, keep=2))
    names = {p.name for p in saved_checkpoints(tmp_path)}
    assert {"rl_model_24_steps.zip", "rl_model_32_steps.zip"} <= names
    assert {f"rl_model_{s}_steps.zip" for s in (1000, 2000, 3000)} <= names
    assert "rl_model_16_steps.zip" not in names


def test_resume_takes_the_newest_checkpoint_that_loads(tmp_path, capsys):
    _ppo().learn(24, callback=UpdateCheckpointCallback(tmp_path, keep=0))
    newest = tmp_path / "rl_model_24_steps.zip"
    newest.write_bytes(newest.read_bytes()[:200])  # torn by a kill during the save
    assert latest_checkpoint(tmp_path).name == "rl_model_16_steps.zip"
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "rl_model_24_steps.zip" in out


def test_checkpoints_sort_by_timesteps_not_by_name(tmp_path):
    for steps in (512, 1024, 96):
        _ppo().save(tmp_path / f"rl_model_{steps}_steps.zip")
    (tmp_path / "rl_model_final.zip").touch()
    assert [p.name for p in saved_checkpoints(tmp_path)] == [
        "rl_model_96_steps.zip", "rl_model_512_steps.zip", "rl_model_1024_steps.zip"]
    assert latest_checkpoint(tmp_path).name == "rl_model_1024_steps.zip"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_negative_keep_is_refused(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        UpdateCheckpointCallback(tmp_path, keep=-1)
