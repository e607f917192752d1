"""Evaluations whose envs step in subprocesses play exactly the episodes of the in-process loop."""

import pytest

from alfworld_bridge.toy_games import write_toy_games
from vlm_policy.training.evaluation import eval_env_factory, evaluate_vlm, standalone_policy


@pytest.mark.slow
def test_reference_agents_play_the_same_games_in_subprocesses(tmp_path, monkeypatch, capsys):
    from helpers import load_script

    write_toy_games(tmp_path / "toy")
    (tmp_path / "json_2.1.1").mkdir()
    (tmp_path / "json_2.1.1" / "valid_seen").symlink_to(tmp_path / "toy", target_is_directory=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # game files built here, in subprocesses too
    benchmark = load_script("benchmarks/alfworld_eval_speed.py")
    # Two subprocesses for three games: the episodes spread differently over the envs (two in one), each plays
    # the same (the random agent, seeded per game, is the one whose play would show a difference).
    assert benchmark.main(["--data", str(tmp_path), "--games", "3", "--agents", "random", "--subprocesses", "2"]) == 0
    printed = capsys.readouterr().out
    assert "random: 3 games in this process" in printed, printed
    assert "random: 2 subprocesses" in printed and "the same outcomes" in printed, printed


@pytest.mark.slow
def test_a_vlm_evaluation_in_subprocesses_scores_as_the_in_process_one():
    make_env = eval_env_factory("gym_cards/NumberLine-v0", "tiny", 8, env_kwargs={"max_episode_steps": 3})
    policy = standalone_policy("tiny", make_env(), device="cpu")
    here, first = evaluate_vlm(policy, make_env, 4, seed=7, parallel=2, record_first=True)
    there, first_there = evaluate_vlm(policy, make_env, 4, seed=7, parallel=2, record_first=True, subprocesses=True)
    assert there == here and here.mean_length > 1
    assert first_there.answers == first.answers and len(first_there.frames) == len(first.frames)
    with pytest.raises(ValueError, match="without subprocesses"):
        evaluate_vlm(policy, make_env, 2, seed=0, end_loops=True, subprocesses=True)
