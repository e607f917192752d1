"""PPO's greedy validation checks: when they run, what they keep, that they leave PPO's draws alone."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import configure

from vlm_policy.training.callbacks import (
    GreedyValidationCallback,
    KeepBestAgent,
    StopOnValidationSuccess,
    kept_best,
    read_validation,
)


class _StandInPolicy(torch.nn.Module):
    def set_training_mode(self, mode: bool) -> None:
        self.train(mode)


class _StandInAgent:
    """What the callback touches of an SB3 algorithm: its step count, policy, logger and save()."""

    def __init__(self) -> None:
        self.num_timesteps = 0
        self.n_steps, self.n_envs = 8, 1
        self.policy = _StandInPolicy()
        self.logger = configure(None, [])

    def get_env(self):
        return None

    def save(self, path) -> None:
        Path(path).write_text(f"agent at {self.num_timesteps}")


def _train(callback: GreedyValidationCallback, agent: _StandInAgent, updates: int, rollout_steps: int = 8) -> int:
    """Drives the callback as PPO.learn does: training start, each rollout's start (after the previous update),
    its env steps (SB3 counts a step, then asks the callbacks, and stops the rollout and training on False).
    Returns the updates made."""
    agent.n_steps = rollout_steps
    callback.init_callback(agent)
    callback.on_training_start({}, {})
    made = 0
    for _ in range(updates):
        callback.on_rollout_start()
        agent.num_timesteps += 1
        if not callback.on_step():
            break
        agent.num_timesteps += rollout_steps - 1
        callback.on_rollout_end()
        made += 1
    callback.on_training_end()
    return made


def test_checks_run_at_the_start_every_n_updates_and_at_the_end_keeping_the_best(tmp_path):
    scores = iter([0.5, 0.75, 0.25, 0.75, 0.5])  # the start, updates 2, 4, 6 and the last (7)
    modes = []

    def check(policy):
        # Rank 0 plays alone: a forward that waited for the other processes' NaN verdict would hang.
        modes.append(policy.training)
        assert not policy.agree_across_processes
        return next(scores)

    agent = _StandInAgent()
    agent.policy.train(True)
    agent.policy.agree_across_processes = True  # as data-parallel PPO sets it
    _train(GreedyValidationCallback(check, tmp_path / "validation.jsonl", every=2,
                                    callback_after_check=KeepBestAgent(tmp_path / "best")), agent, updates=7)
    checks = read_validation(tmp_path / "validation.jsonl")
    assert [c["timesteps"] for c in checks] == [0, 16, 32, 48, 56]
    assert [c["success_rate"] for c in checks] == [0.5, 0.75, 0.25, 0.75, 0.5]
    assert modes == [False] * 5 and agent.policy.training  # played in eval mode, then set back
    assert agent.policy.agree_across_processes  # left as PPO had set it (see the next test)
    # A tie keeps the earlier agent, closer to the start; the folder holds it and its own check.
    assert kept_best(tmp_path / "best") == {"timesteps": 16, "success_rate": 0.75}
    assert (tmp_path / "best" / "agent.zip").read_text() == "agent at 16"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial")]


def test_a_resumed_run_checks_at_the_step_counts_of_the_uninterrupted_one(tmp_path):
    whole = GreedyValidationCallback(lambda _: 0.5, tmp_path / "whole.jsonl", every=2)
    _train(whole, _StandInAgent(), updates=8)
    uninterrupted = [c["timesteps"] for c in read_validation(tmp_path / "whole.jsonl")]
    assert uninterrupted == [0, 16, 32, 48, 64]
    # Interrupted after 3 updates (checks at 0 and 16 made), resumed from the checkpoint after update 1.
    first = GreedyValidationCallback(lambda _: 0.5, tmp_path / "resumed.jsonl", every=2)
    _train(first, _StandInAgent(), updates=3)
    resumed_agent = _StandInAgent()
    resumed_agent.num_timesteps = 8
    resumed = GreedyValidationCallback(lambda _: 0.5, tmp_path / "resumed.jsonl", every=2)
    _train(resumed, resumed_agent, updates=7)
    assert [c["timesteps"] for c in read_validation(tmp_path / "resumed.jsonl")] == uninterrupted


def test_tensorboard_shows_each_check_at_its_own_step_the_last_included(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scores = iter([0.5, 0.75, 1.0])
    agent = _StandInAgent()
    agent.logger = configure(str(tmp_path / "tb"), ["tensorboard"])
    callback = GreedyValidationCallback(lambda _: next(scores), tmp_path / "validation.jsonl", every=2)
    _train(callback, agent, updates=4)  # checks at 0, 16 and the last, 32; SB3 dumps nothing here
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("validation/success_rate")]
    assert logged == [(0, 0.5), (16, 0.75), (32, 1.0)]


def test_a_check_at_the_stop_success_ends_training_with_its_agent(tmp_path, capsys):
    scores = iter([0.5, 0.75, 1.0, 0.25])  # the start, updates 1, 2 (all won: stop), and one never reached
    after = CallbackList([KeepBestAgent(tmp_path / "best"), StopOnValidationSuccess(1.0)])
    callback = GreedyValidationCallback(lambda _: next(scores), tmp_path / "validation.jsonl", every=1,
                                        callback_after_check=after)
    agent = _StandInAgent()
    assert _train(callback, agent, updates=5) == 2 and agent.num_timesteps == 17
    # The stop's check is the last: the agent is the one it played, not checked again at 17.
    assert [c["timesteps"] for c in read_validation(tmp_path / "validation.jsonl")] == [0, 8, 16]
    assert callback.stopped_at == {"timesteps": 16, "success_rate": 1.0}
    assert kept_best(tmp_path / "best") == callback.stopped_at
    assert "PPO stops at 16 env steps: greedy answers win 100.0%" in capsys.readouterr().out
    # Without a stop target (the default) PPO makes every env step whatever the checks say.
    never = GreedyValidationCallback(lambda _: 1.0, tmp_path / "other.jsonl", every=1)
    _train(never, _StandInAgent(), updates=3)
    assert never.stopped_at is None and len(read_validation(tmp_path / "other.jsonl")) == 4
    with pytest.raises(ValueError, match="between 0 and 1"):
        StopOnValidationSuccess(1.5)


def test_a_resumed_run_keeps_its_checks_and_best_agent(tmp_path):
    record, best = tmp_path / "validation.jsonl", tmp_path / "best"
    agent = _StandInAgent()
    scores = iter([0.5, 0.7, 0.9])  # at 0, 8 and 16 env steps
    _train(GreedyValidationCallback(lambda _: next(scores), record, every=1, callback_after_check=KeepBestAgent(best)),
           agent, updates=2)
    # Killed mid-line after the second check; resumed from the checkpoint of 8 env steps.
    with record.open("a") as handle:
        handle.write('{"timesteps": 2')
    agent.num_timesteps = 8
    resumed = GreedyValidationCallback(lambda _: 0.5, record, every=1, callback_after_check=KeepBestAgent(best))
    assert [c["timesteps"] for c in resumed.checks] == [0, 8, 16]
    resumed.init_callback(agent)
    resumed.on_training_start({}, {})  # 8 was checked before the kill: not played again; 16 is made again
    assert [c["timesteps"] for c in read_validation(record)] == [0, 8]
    resumed.on_rollout_start()
    agent.num_timesteps = 16
    resumed.on_training_end()
    assert read_validation(record)[-1] == {"timesteps": 16, "success_rate": 0.5}
    # The interrupted attempt's agent at 16 stays the kept one: a worse agent never replaces it.
    assert kept_best(best) == {"timesteps": 16, "success_rate": 0.9}


def test_the_checks_leave_every_random_generator_as_it_was(tmp_path):
    def noisy_check(policy):
        random.random(), np.random.rand(), torch.rand(3)
        torch.manual_seed(123)  # evaluation reseeds, as the policy's own seeding does
        return 0.5

    def draws(with_checks: bool):
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        agent = _StandInAgent()
        if with_checks:
            _train(GreedyValidationCallback(noisy_check, tmp_path / f"v{with_checks}.jsonl", every=1), agent, 3)
        return random.random(), float(np.random.rand()), torch.rand(2).tolist()

    assert draws(True) == draws(False)


def test_without_a_record_path_nothing_is_played_or_written(tmp_path):
    """The processes other than rank 0 in a data-parallel run."""
    played = []
    _train(GreedyValidationCallback(lambda p: played.append(1) or 1.0, None, every=1), _StandInAgent(), 3)
    assert played == [] and not list(tmp_path.iterdir())


def test_torn_or_foreign_best_folders_are_not_taken_as_a_kept_agent(tmp_path):
    assert kept_best(tmp_path / "missing") is None
    folder = tmp_path / "best"
    folder.mkdir()
    (folder / "check.json").write_text(json.dumps({"timesteps": 8, "success_rate": 0.5}))
    assert kept_best(folder) is None  # no agent beside the check
    (folder / "agent.zip").write_text("x")
    assert kept_best(folder) == {"timesteps": 8, "success_rate": 0.5}
    (folder / "check.json").write_text('{"timesteps": 8')
    assert kept_best(folder) is None


def test_every_must_be_at_least_one_update():
    with pytest.raises(ValueError, match="every must be >= 1"):
        GreedyValidationCallback(lambda _: 0.0, None, every=0)


class _AlwaysAnswers:
    """A greedy stand-in policy that writes the same answer to every frame."""

    def __init__(self, tokenizer, answer: str, length: int = 24) -> None:
        ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        self.ids = ids + [tokenizer.eos_token_id] * (length - len(ids))

    def __call__(self, batch, deterministic: bool = True):
        return (torch.tensor([self.ids] * len(batch["image"]), dtype=torch.float32),)


def _numberline_maker(tokenizer, **env_kwargs):
    import gymnasium as gym

    from vlm_policy.env_bridge import TokenActionWrapper

    return lambda: TokenActionWrapper(gym.make("gym_cards/NumberLine-v0", image_size=64, **env_kwargs), tokenizer,
                                      max_new_tokens=24)


def test_a_greedy_check_ends_an_episode_whose_state_comes_back_as_lost():
    from vlm_policy.loading import load_processor
    from vlm_policy.training.evaluation import evaluate_vlm

    tokenizer = load_processor("tiny").tokenizer
    start = lambda i: {"current": 0, "target": 3}  # noqa: E731
    stuck, moving = _AlwaysAnswers(tokenizer, '{"action": "-"}'), _AlwaysAnswers(tokenizer, '{"action": "+"}')
    make = _numberline_maker(tokenizer)
    played_out, _ = evaluate_vlm(stuck, make, 3, 0, reset_options=start)
    cut_short, _ = evaluate_vlm(stuck, make, 3, 0, reset_options=start, end_loops=True)
    assert played_out.success_rate == cut_short.success_rate == 0.0
    assert played_out.mean_length == 10 and cut_short.mean_length == 1  # "-" at 0 stays at 0: lost at once
    won, _ = evaluate_vlm(moving, make, 3, 0, reset_options=start, end_loops=True)
    assert won.success_rate == 1.0 and won.mean_length == 3
    # Where an unreadable answer plays a random action, a state met again does not mean a loop.
    random_fill = _numberline_maker(tokenizer, invalid_action="random")
    assert evaluate_vlm(stuck, random_fill, 2, 0, reset_options=start, end_loops=True)[0].mean_length == 10
    with pytest.raises(ValueError, match="greedy"):
        evaluate_vlm(stuck, make, 1, 0, deterministic=False, end_loops=True)


def test_only_tasks_whose_steps_draw_nothing_have_a_loop_key():
    import gymnasium as gym

    import gym_vlm_cards  # noqa: F401

    keys = {}
    for env_id in ("gym_cards/NumberLine-v0", "gym_cards/EZPoints-v0", "gym_cards/Points24-v0", "gym_cards/Blackjack-v0"):
        env = gym.make(env_id, image_size=64)
        env.reset(seed=0)
        keys[env_id] = env.unwrapped.loop_key()
    assert keys["gym_cards/Blackjack-v0"] is None  # its hits draw cards
    assert all(isinstance(keys[k], str) for k in keys if "Blackjack" not in k)
    line = gym.make("gym_cards/NumberLine-v0", image_size=64)
    line.reset(options={"current": 2, "target": 4})
    assert json.loads(line.unwrapped.loop_key()) == {"Current": 2, "Target": 4}
