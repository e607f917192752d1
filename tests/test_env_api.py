import hashlib
import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import gym_vlm_cards
from gym_vlm_cards.agents import OracleAgent
from gym_vlm_cards.evaluate import run_episodes
from tests.helpers import answer

TASKS = sorted(gym_vlm_cards.TASK_IDS)


@pytest.mark.parametrize("env_id", TASKS)
@pytest.mark.parametrize("mode", ["text", "discrete"])
def test_gymnasium_check_env_passes(env_id, mode):
    check_env(gym.make(env_id, action_mode=mode).unwrapped, skip_render_check=False)


@pytest.mark.parametrize("env_id", TASKS)
def test_sb3_check_env_passes_in_discrete_mode(env_id):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    sb3_check_env(gym.make(env_id, action_mode="discrete"), warn=False)


@pytest.mark.parametrize(
    "env_id, n", [("gym_cards/NumberLine-v0", 2), ("gym_cards/EZPoints-v0", 13), ("gym_cards/Points24-v0", 17), ("gym_cards/Blackjack-v0", 2)]
)
def test_discrete_spaces_keep_the_reference_order(env_id, n):
    env = gym.make(env_id, action_mode="discrete")
    assert env.action_space.n == n
    first = {"gym_cards/NumberLine-v0": "-", "gym_cards/Blackjack-v0": "stand"}.get(env_id, "1")
    assert env.unwrapped.legal_actions[0] == first
    assert isinstance(gym.make(env_id).action_space, gym.spaces.Text)


def _trajectory(env_id, seed, steps=30):
    env = gym.make(env_id)
    rng = np.random.default_rng(123)
    obs, info = env.reset(seed=seed)
    frames, infos = [obs], [info]
    legal = env.unwrapped.legal_actions
    for _ in range(steps):
        obs, r, te, tr, info = env.step(answer(legal[rng.integers(len(legal))]))
        frames.append(obs)
        infos.append((r, te, tr, {k: v for k, v in info.items() if "prompt" not in k}))
        if te or tr:
            obs, info = env.reset()
            frames.append(obs)
    return frames, infos


@pytest.mark.parametrize("env_id", TASKS)
def test_same_seed_reproduces_the_episodes_exactly(env_id):
    frames_a, infos_a = _trajectory(env_id, seed=7)
    frames_b, infos_b = _trajectory(env_id, seed=7)
    assert infos_a == infos_b
    assert all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b))
    frames_c, infos_c = _trajectory(env_id, seed=8)
    assert infos_c != infos_a


def test_global_random_state_does_not_leak_into_episodes():
    import random

    random.seed(1)
    np.random.seed(1)
    _, a = _trajectory("gym_cards/Points24-v0", seed=3)
    random.seed(2)
    np.random.seed(2)
    _, b = _trajectory("gym_cards/Points24-v0", seed=3)
    assert a == b


@pytest.mark.parametrize("env_id", TASKS)
def test_non_string_action_in_text_mode_is_a_type_error(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="str"):
        env.step(1)


def test_discrete_mode_rejects_out_of_range_and_non_int():
    env = gym.make("gym_cards/NumberLine-v0", action_mode="discrete")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="out of range"):
        env.step(5)
    with pytest.raises(TypeError, match="int"):
        env.step("+")
    env.step(np.int64(1))  # numpy integers are fine


@pytest.mark.parametrize("kwargs, message", [({"action_mode": "json"}, "action_mode"), ({"invalid_action": "ignore"}, "invalid_action"),
                                             ({"render_mode": "ansi"}, "render_mode"), ({"image_size": 8}, "image_size"),
                                             ({"image_size": "big"}, "image_size")])
def test_bad_constructor_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gym.make("gym_cards/NumberLine-v0", **kwargs)


def test_penalize_mode_costs_one_and_changes_nothing():
    env = gym.make("gym_cards/EZPoints-v0", invalid_action="penalize")
    env.reset(options={"cards": ["H5", "S7"]})
    env.step(answer("5"))
    obs_before = env.unwrapped._observation()
    _, r, te, tr, info = env.step("I think I will add them")
    assert (r, te, tr) == (-1.0, False, False)
    assert info["parsed_action"] is None and info["action_is_valid"] is False
    assert info["Formula"] == ["5"]
    assert env.unwrapped.elapsed_steps == 2  # it still counts as a step
    assert np.array_equal(obs_before, env.unwrapped._observation())


def test_random_mode_takes_a_random_legal_action():
    env = gym.make("gym_cards/NumberLine-v0", invalid_action="random")
    env.reset(options={"current": 2, "target": 4})
    _, _, _, _, info = env.step("no idea")
    assert info["action_is_valid"] is False and info["parsed_action"] is None
    assert info["executed_action"] in ("+", "-")
    assert info["Current"] in (1, 3)


def test_a_one_megabyte_answer_is_parsed():
    env = gym.make("gym_cards/NumberLine-v0")
    env.reset(seed=0)
    _, r, *_ , info = env.step("x" * 1_000_000 + '{"action": "+"}')  # its speed: benchmarks/hostile_answers.py
    assert info["parsed_action"] == "+"


@pytest.mark.parametrize("env_id", TASKS)
def test_info_has_state_prompts_and_text(env_id):
    _, info = gym.make(env_id).reset(seed=0)
    assert '"action"' in info["prompt"] and '"thoughts"' in info["prompt"]
    assert '"action"' in info["action_only_prompt"] and "thoughts" not in info["action_only_prompt"]
    assert isinstance(info["text_state"], str) and info["text_state"]
    keys = {"gym_cards/NumberLine-v0": {"Target", "Current"}, "gym_cards/EZPoints-v0": {"Cards", "Numbers", "Formula"},
            "gym_cards/Points24-v0": {"Cards", "Numbers", "Formula", "solvable"}, "gym_cards/Blackjack-v0": {"Dealer Card", "Player Card"}}
    assert keys[env_id] <= set(info)


@pytest.mark.parametrize("env_id", TASKS)
def test_observation_is_the_configured_size(env_id):
    env = gym.make(env_id, image_size=(200, 240))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (200, 240, 3) and obs.dtype == np.uint8
    assert obs.std() > 10  # something is drawn


@pytest.mark.parametrize("env_id", TASKS)
def test_rgb_array_render_returns_the_frame(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert np.array_equal(env.render(), obs)


def test_human_render_opens_a_pygame_window():
    env = gym.make("gym_cards/NumberLine-v0", render_mode="human")
    env.reset(seed=0)
    env.step(answer("+"))
    import pygame

    surface = pygame.display.get_surface()
    assert surface is not None and surface.get_size() == (300, 300)
    env.close()


def test_pixels_do_not_depend_on_the_working_directory(tmp_path):
    code = (
        "import gymnasium as gym, hashlib, gym_vlm_cards\n"
        "for e in sorted(gym_vlm_cards.TASK_IDS):\n"
        "    o, _ = gym.make(e).reset(seed=5)\n"
        "    print(hashlib.sha256(o.tobytes()).hexdigest())\n"
    )
    here = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert here == there and len(here.split()) == 4
    local = [hashlib.sha256(gym.make(e).reset(seed=5)[0].tobytes()).hexdigest() for e in TASKS]
    assert local == here.split()


@pytest.mark.parametrize("env_id", ["gym_cards/NumberLine-v0", "gym_cards/EZPoints-v0"])
def test_oracle_always_wins_numberline_and_ezpoints(env_id):
    env = gym.make(env_id)
    result = run_episodes(env, OracleAgent(env), episodes=200, seed=0)
    assert result.success_rate == 1.0 and result.invalid_rate == 0.0


def test_points24_oracle_success_equals_the_solvable_fraction():
    env = gym.make("gym_cards/Points24-v0")
    solvable = sum(env.reset(seed=s)[1]["solvable"] for s in range(300))
    result = run_episodes(env, OracleAgent(env), episodes=300, seed=0)
    assert result.success_rate == solvable / 300
    assert 0.5 < result.success_rate < 1.0


def test_blackjack_oracle_beats_random_play():
    from gym_vlm_cards.agents import RandomAgent

    env = gym.make("gym_cards/Blackjack-v0")
    oracle = run_episodes(env, OracleAgent(env), episodes=3000, seed=0)
    random_play = run_episodes(env, RandomAgent(env, seed=0), episodes=3000, seed=0)
    assert oracle.mean_return > random_play.mean_return + 0.2
    assert 0.38 < oracle.success_rate < 0.46  # basic strategy wins about 42% of hands


@pytest.mark.parametrize("env_id", TASKS)
def test_oracle_answers_are_valid_json_in_the_prompt_format(env_id):
    env = gym.make(env_id)
    env.reset(seed=1)
    task = env.unwrapped
    fields = json.loads(task.oracle_answer())
    assert list(fields)[-2:] == ["thoughts", "action"]
    assert fields["action"] in task.legal_actions
    assert json.loads(task.oracle_answer(chain_of_thought=False)) == {"action": fields["action"]}


def test_the_env_package_does_not_import_torch():
    code = "import sys, gymnasium as gym, gym_vlm_cards; gym.make('gym_cards/Points24-v0').reset(seed=0); print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_base_dependencies_are_light():
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    for heavy in ("torch", "transformers", "peft", "stable-baselines3"):
        assert heavy not in base
    every = " ".join(sum(project["optional-dependencies"].values(), [])).lower()
    assert "torchvision" not in every


@pytest.mark.parametrize("size", [64, 96, 300])
def test_small_frames_still_show_every_numberline_state(size):
    env = gym.make("gym_cards/NumberLine-v0", image_size=size)
    frames = {}
    for current in range(6):
        for target in range(6):
            if current != target:
                frame, _ = env.reset(options={"current": current, "target": target})
                frames[frame.tobytes()] = (current, target)
                # Nothing drawn touches the right edge: the text fits the frame.
                assert (frame[:, -2:] == 255).all()
    assert len(frames) == 30


@pytest.mark.parametrize("env_id, options", [
    ("gym_cards/EZPoints-v0", [{"cards": [a, b]} for a, b in [("H2", "ST"), ("H3", "S9"), ("H4", "S8"), ("H5", "S7"), ("H6", "S6")]]),
    ("gym_cards/Points24-v0", [{"cards": ["H2", "S3", "D4", r]} for r in ("C5", "C6", "C7", "C8", "C9", "CT", "CJ", "CQ", "CK", "CA")]),
    ("gym_cards/Blackjack-v0", [{"player": ["H2", r], "dealer": ["D5", "C9"]} for r in ("S3", "S4", "S5", "S6", "S7", "S8", "S9", "ST", "SJ", "SQ", "SK", "SA")]),
])
def test_small_card_frames_still_tell_ranks_apart(env_id, options):
    env = gym.make(env_id, image_size=64)
    frames = {env.reset(options=o)[0].tobytes() for o in options}
    assert len(frames) == len(options)


@pytest.mark.parametrize("env_id, cards, formula", [
    ("gym_cards/EZPoints-v0", ["H5", "S7"], ["5", "+", "7"]),
    ("gym_cards/Points24-v0", ["H8", "S3", "D8", "C3"], "( ( 8 / ( 3 - 8 / 3 ) ) )".split()),
])
@pytest.mark.parametrize("size", [64, 300])
def test_the_formula_stays_inside_small_frames(env_id, cards, formula, size):
    env = gym.make(env_id, image_size=size, formula_limit=30)
    before, _ = env.reset(options={"cards": cards})
    frames = [before]
    for token in formula:
        frame, *_ = env.step(answer(token))
        frames.append(frame)
    # Every token written changes the frame (the formula is visible), and nothing touches the edges.
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))
    green = np.array([0x35, 0x65, 0x4D], dtype=np.uint8)
    assert (frames[-1][-1] == green).all() and (frames[-1][:, -1] == green).all()


@pytest.mark.parametrize("env_id", sorted(gym_vlm_cards.TASK_IDS))
def test_step_limits_are_registered_and_gym_make_can_change_them(env_id):
    assert gym.spec(env_id).max_episode_steps == gym_vlm_cards.registration.STEP_LIMITS[env_id]
    env = gym.make(env_id, max_episode_steps=3)
    assert env.spec.max_episode_steps == 3
    env.reset(seed=0)
    for step in range(1, 4):
        _, _, terminated, truncated, info = env.step("an answer naming no action")  # changes nothing
        assert not terminated and truncated == (step == 3)
        assert info["is_success"] is False  # in every info, the final (truncated) one included


@pytest.mark.parametrize("env_id, options", [
    ("gym_cards/EZPoints-v0", {"cards": ["H6", "H6"]}),
    ("gym_cards/Points24-v0", {"cards": ["H5", "S7", "D2", "S7"]}),
    ("gym_cards/Blackjack-v0", {"player": ["H5", "S7"], "dealer": ["S7", "C9"]}),
])
def test_the_same_card_twice_is_a_reference_deal(env_id, options):
    # The reference draws every card independently, so these hands are ones it deals.
    env = gym.make(env_id)
    _, info = env.reset(options=options)
    assert (info.get("Cards") or info["Player Card"]) == next(iter(options.values()))


def test_a_single_deck_refuses_the_same_card_twice():
    env = gym.make("gym_cards/Points24-v0", deck="single")
    with pytest.raises(ValueError, match="single deck"):
        env.reset(options={"cards": ["H5", "S7", "D2", "S7"]})
    for seed in range(50):
        assert len(set(env.reset(seed=seed)[1]["Cards"])) == 4


def test_numpy_integers_are_accepted_as_options():
    _, info = gym.make("gym_cards/NumberLine-v0").reset(options={"current": np.int64(1), "target": np.int32(3)})
    assert (info["Current"], info["Target"]) == (1, 3)
    with pytest.raises(ValueError, match="current"):
        gym.make("gym_cards/NumberLine-v0").reset(options={"current": True, "target": 3})


def test_stepping_after_the_end_is_an_error_not_another_reward():
    env = gym.make("gym_cards/EZPoints-v0")
    env.reset(options={"cards": ["H5", "S7"]})
    for action in ("5", "+", "7"):
        env.step(json.dumps({"action": action}))
    assert env.step('{"action": "="}')[1] == 10.0
    with pytest.raises(RuntimeError, match="call reset"):
        env.step('{"action": "="}')
    env.reset(seed=0)  # and a reset starts over
    env.step('{"action": "+"}')


@pytest.mark.parametrize("env_id, kwargs", [
    ("gym_cards/NumberLine-v0", {"image_size": (32.9, 64)}),
    ("gym_cards/NumberLine-v0", {"image_size": ("64", "64")}),
    ("gym_cards/NumberLine-v0", {"image_size": (True, 64)}),
    ("gym_cards/NumberLine-v0", {"image_size": 64.0}),
    ("gym_cards/NumberLine-v0", {"max_position": 1.7}),
    ("gym_cards/NumberLine-v0", {"max_position": "5"}),
    ("gym_cards/Points24-v0", {"face_cards_as_ten": "no"}),
    ("gym_cards/Points24-v0", {"face_cards_as_ten": 0}),
    ("gym_cards/Points24-v0", {"deck": "double"}),
    ("gym_cards/Points24-v0", {"formula_limit": 2.5}),
    ("gym_cards/Blackjack-v0", {"natural": "no"}),
    ("gym_cards/Blackjack-v0", {"sab": "false"}),
])
def test_arguments_of_another_type_are_refused_not_coerced(env_id, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        gym.make(env_id, **kwargs)


@pytest.mark.parametrize("env_id", ["gym_cards/NumberLine-v0", "gym_cards/EZPoints-v0", "gym_cards/Points24-v0",
                                    "gym_cards/Blackjack-v0"])
@pytest.mark.parametrize("size", [(32, 600), (600, 32), (32, 32), (40, 300)])
def test_every_accepted_frame_shape_is_drawn(env_id, size):
    env = gym.make(env_id, image_size=size)
    frame, _ = env.reset(seed=0)
    assert frame.shape == (*size, 3)
    frame, *_ = env.step(json.dumps({"action": env.unwrapped.oracle_action()}))
    assert frame.shape == (*size, 3)


def test_blackjack_refuses_a_bust_dealer_hand():
    env = gym.make("gym_cards/Blackjack-v0")
    with pytest.raises(ValueError, match="dealer's hand .* bust"):
        env.reset(options={"player": ["H5", "S7"], "dealer": ["SK", "CQ", "D5"]})
