"""The one episode loop (gym_vlm_cards.evaluate.play_episodes) that every evaluation plays."""

import gymnasium as gym

import gym_vlm_cards  # noqa: F401
from gym_vlm_cards.agents import AGENTS
from gym_vlm_cards.evaluate import acting, play_episodes, run_episodes, summarise


def _envs(n):
    return [gym.make("gym_cards/NumberLine-v0") for _ in range(n)]


def _towards_target(observations, infos):
    """A batched agent that reads each env's state from its own info (as a policy reads its observation)."""
    return ['{"action": "%s"}' % ("+" if info["Current"] < info["Target"] else "-") for info in infos]


def test_envs_stepping_together_play_the_same_episodes_as_one_env():
    one = play_episodes(_envs(1), _towards_target, 12, seed=50)
    four = play_episodes(_envs(4), _towards_target, 12, seed=50)
    assert [e.index for e in four] == list(range(12))
    assert [(e.episode_return, e.length, e.info["Target"]) for e in one] == [
        (e.episode_return, e.length, e.info["Target"]) for e in four]
    assert summarise("greedy", four).success_rate == 1.0
    unseeded = play_episodes(_envs(1), _towards_target, 3, reset_options=lambda i: None)
    assert len(unseeded) == 3


def test_a_watch_that_says_stop_ends_the_episode_as_lost():
    calls = []

    def stop_at_once(index, env, obs, reward, info):
        calls.append((index, reward))
        return reward is not None  # after the first step

    envs = _envs(2)
    ends = play_episodes(envs, acting(AGENTS["random"](envs[0], seed=0)), 5, seed=0, watch=stop_at_once)
    assert [e.length for e in ends] == [1] * 5
    assert sum(reward is None for _, reward in calls) == 5  # one call per reset


def test_run_episodes_summarises_the_loop():
    env = _envs(1)[0]
    result = run_episodes(env, AGENTS["oracle"](env, seed=0), 10, seed=7)
    assert result.episodes == 10 and result.success_rate == 1.0 and result.invalid_rate == 0.0
