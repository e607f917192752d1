import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import alfworld_bridge  # noqa: F401  (registers alfworld/ALFWorld-v0)
from alfworld_bridge.games import GameDataError, find_games
from alfworld_bridge.toy_games import walkthrough, write_toy_games

# One real game ships with the tests (MIT; see tests/data/alfworld/SOURCE.md), so they need nothing
# outside the repository.
SAMPLE = Path(__file__).resolve().parent / "data" / "alfworld"
REAL_GAME = SAMPLE / "json_2.1.1" / "train" / "pick_heat_then_place_in_recep-Potato-None-SinkBasin-14" / "trial_T20190908_231731_054988"


def answer(command: str) -> str:
    return json.dumps({"thoughts": "test", "action": command})


@pytest.fixture(scope="module")
def sample_root():
    assert REAL_GAME.is_dir(), f"the ALFWorld game shipped with the tests is missing at {REAL_GAME}"
    return SAMPLE


@pytest.fixture(scope="module")
def real_env(sample_root):
    env = gym.make("alfworld/ALFWorld-v0", data_root=sample_root, split="train")
    yield env
    env.close()


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_games(root)
    return root


def test_reset_gives_an_rgb_image_and_the_task(real_env):
    obs, info = real_env.reset(seed=0)
    assert obs.shape == (300, 300, 3) and obs.dtype == np.uint8 and obs.std() > 5
    assert info["task"] == "put a hot potato in sinkbasin" and info["task_type"] == "pick_heat_then_place_in_recep"
    assert "go to sinkbasin 1" in info["admissible_commands"]
    assert info["won"] is False and info["goal_condition_success_rate"] == 0.0
    assert info["game_file"].endswith("game.tw-pddl")
    for command in info["admissible_commands"][:3]:
        assert command in info["prompt"]
    assert '"action"' in info["prompt"] and "thoughts" not in info["action_only_prompt"]


def test_an_admissible_command_is_accepted(real_env):
    real_env.reset(seed=0)
    _, reward, terminated, _, info = real_env.step(answer("go to countertop 2"))
    assert info["action_is_valid"] and info["parsed_action"] == "go to countertop 2"
    assert "countertop 2" in info["observation_text"] and reward == 0.0 and not terminated
    assert "take potato 1 from countertop 2" in info["admissible_commands"]


def test_matching_is_exact_after_normalising_case_and_spaces(real_env):
    real_env.reset(seed=0)
    assert real_env.step(answer("  Go  To CounterTop 2 "))[4]["parsed_action"] == "go to countertop 2"
    assert real_env.step(answer("go to countertop"))[4]["action_is_valid"] is False  # no fuzzy matching


@pytest.mark.slow
def test_expert_walkthrough_wins_with_reward_51_and_the_goal_rate_climbs(real_env):
    _, info = real_env.reset(seed=0)
    steps = json.loads(Path(info["game_file"]).read_text())["walkthrough"]
    rates, rewards = [], []
    for command in steps:
        _, reward, terminated, truncated, info = real_env.step(answer(command))
        assert info["action_is_valid"], command
        rates.append(info["goal_condition_success_rate"])
        rewards.append(reward)
    distinct = [r for i, r in enumerate(rates) if i == 0 or r != rates[i - 1]]
    assert distinct == pytest.approx([0.0, 1 / 3, 1.0])
    assert info["won"] and terminated and not truncated and info["is_success"]
    assert rewards[-1] == 51.0


def test_an_inadmissible_command_costs_one_and_changes_nothing(real_env):
    real_env.reset(seed=0)
    before = real_env.unwrapped.observation_text
    facts = sorted(map(str, real_env.unwrapped.state["facts"]))
    _, reward, terminated, _, info = real_env.step(answer("fly to the moon"))
    assert reward == -1.0 and not terminated and info["action_is_valid"] is False and info["parsed_action"] is None
    assert real_env.unwrapped.observation_text == before
    assert sorted(map(str, real_env.unwrapped.state["facts"])) == facts
    assert real_env.step("no json at all")[1] == -1.0


@pytest.mark.slow
def test_random_mode_plays_a_random_admissible_command(sample_root):
    env = gym.make("alfworld/ALFWorld-v0", data_root=sample_root, split="train", invalid_action="random")
    _, info = env.reset(seed=0)
    commands = info["admissible_commands"]
    _, reward, _, _, info = env.step(answer("fly"))
    # Scored as the command played (as in the card tasks' random mode): no win, no goal condition met yet.
    assert info["executed_action"] in commands and reward == info["goal_condition_success_rate"] == 0.0
    assert info["parsed_action"] is None and not info["action_is_valid"]
    env.close()


def test_non_string_actions_are_a_type_error(real_env):
    real_env.reset(seed=0)
    with pytest.raises(TypeError, match="str"):
        real_env.step(3)


def test_the_same_seed_picks_the_same_game(toy_root, tmp_path):
    env = gym.make("alfworld/ALFWorld-v0", data_root=toy_root, split=None, cache_dir=tmp_path)
    picks = [env.reset(seed=s)[1]["game_file"] for s in range(6)]
    again = [env.reset(seed=s)[1]["game_file"] for s in range(6)]
    assert picks == again and len(set(picks)) > 1
    env.close()


@pytest.mark.slow
def test_gymnasium_check_env_passes(toy_root, tmp_path):
    # A toy game: the same env code as a real one (the real game is played by the other tests), faster resets.
    env = gym.make("alfworld/ALFWorld-v0", data_root=toy_root / "pick_and_place_simple", split=None, cache_dir=tmp_path)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize("style", ["text", "map"])
def test_each_render_style_draws(sample_root, style):
    env = gym.make("alfworld/ALFWorld-v0", data_root=sample_root, split="train", render_style=style,
                   render_mode="rgb_array")
    first, _ = env.reset(seed=0)
    after, *_ = env.step(answer("go to microwave 1"))
    assert first.std() > 5 and not np.array_equal(first, after)  # the view follows the game
    assert np.array_equal(env.render(), after)
    env.close()


def test_thor_style_is_not_offered_and_says_why(sample_root):
    with pytest.raises(ValueError, match="not offered: THOR's first-person frames come from ALFWorld's THOR env"):
        gym.make("alfworld/ALFWorld-v0", data_root=sample_root, split="train", render_style="thor")


@pytest.mark.slow
def test_map_never_shows_what_is_inside_receptacles(sample_root):
    frames = {}
    for style in ("map", "text"):
        env = gym.make("alfworld/ALFWorld-v0", data_root=sample_root, split="train", render_style=style)
        env.reset(seed=0)
        closed, *_ = env.step(answer("go to fridge 1"))
        opened, _, _, _, info = env.step(answer("open fridge 1"))  # the text now lists what is inside
        assert info["action_is_valid"] and "In it, you see" in info["observation_text"]
        frames[style] = (closed, opened)
        env.close()
    assert np.array_equal(*frames["map"])  # the map is unchanged: contents are never drawn
    assert not np.array_equal(*frames["text"])


@pytest.mark.parametrize("task_type", ["pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
                                       "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep",
                                       "pick_two_obj_and_place"])
def test_self_written_problem_is_solved_by_its_walkthrough(toy_root, tmp_path, task_type):
    folder = toy_root / task_type
    env = gym.make("alfworld/ALFWorld-v0", data_root=folder, split=None, cache_dir=tmp_path)
    _, info = env.reset(seed=0)
    assert info["task_type"] == task_type and info["goal_condition_success_rate"] == 0.0
    for command in walkthrough(info["game_file"]):
        _, reward, terminated, _, info = env.step(answer(command))
        assert info["action_is_valid"], (command, info["admissible_commands"])
    assert terminated and info["won"] and reward == 51.0 and info["goal_condition_success_rate"] == 1.0
    env.close()


@pytest.mark.slow
def test_game_files_are_built_from_raw_data(sample_root, tmp_path):
    raw = tmp_path / "data" / "json_2.1.1" / "train" / "task" / "trial"
    raw.mkdir(parents=True)
    for name in ("initial_state.pddl", "traj_data.json"):  # a test-only copy in a temp folder
        shutil.copy(REAL_GAME / name, raw / name)
    games = find_games(tmp_path / "data", "train", cache_dir=tmp_path / "cache")
    assert len(games) == 1 and games[0].is_relative_to(tmp_path / "cache")
    data = json.loads(games[0].read_text())
    assert {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"} <= set(data)
    env = gym.make("alfworld/ALFWorld-v0", game_files=games)
    _, info = env.reset(seed=0)
    # One of ALFWorld's templated goal sentences, chosen from the data, so a rebuild gives the same game.
    assert "potato" in info["task"] and "sinkbasin" in info["task"]
    shutil.rmtree(tmp_path / "cache")
    rebuilt = find_games(tmp_path / "data", "train", cache_dir=tmp_path / "cache")
    assert rebuilt[0].read_text() == games[0].read_text()
    assert info["task_type"] == "pick_heat_then_place_in_recep"
    env.close()


def test_missing_data_says_what_was_looked_for_and_how_to_get_it(tmp_path):
    with pytest.raises(GameDataError, match="alfworld-download"):
        find_games(tmp_path, "train")
    (tmp_path / "json_2.1.1" / "train" / "x").mkdir(parents=True)
    with pytest.raises(GameDataError, match="traj_data.json"):
        find_games(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        find_games(tmp_path, "test")


@pytest.mark.slow
def test_ppo_with_the_tiny_vlm_runs_a_few_updates_on_the_bridge(toy_root, tmp_path):
    from stable_baselines3 import PPO

    from vlm_policy import VLMPolicy, make_vlm_vec_env

    env = make_vlm_vec_env("alfworld/ALFWorld-v0", n_envs=2, model="tiny", seed=0, max_new_tokens=16,
                           env_kwargs={"data_root": str(toy_root / "pick_and_place_simple"), "split": None,
                                       "cache_dir": str(tmp_path), "max_episode_steps": 4})
    obs = env.reset()
    assert obs["image"].shape == (2, 64, 64, 3)
    assert b"go to countertop 1" in obs["prompt"][0].astype(np.uint8).tobytes()  # per-step text rides in the obs
    model = PPO(VLMPolicy, env, n_steps=4, batch_size=8, n_epochs=1, policy_kwargs={"model": "tiny"})
    model.learn(16)
    assert model.num_timesteps == 16 and np.isfinite(model.logger.name_to_value["train/loss"])


@pytest.mark.slow
def test_stepping_after_a_win_is_an_error_not_a_second_reward(real_env):
    real_env.reset(options={"game": 0})
    for command in json.loads((REAL_GAME / "game.tw-pddl").read_text())["walkthrough"]:
        _, _, terminated, _, _ = real_env.step(answer(command))
    assert terminated
    with pytest.raises(RuntimeError, match="call reset"):
        real_env.step(answer("look"))


def test_unknown_option_keys_are_refused_even_beside_game(real_env):
    with pytest.raises(ValueError, match="only 'game'"):
        real_env.reset(options={"game": 0, "difficulty": 3})


def test_a_corrupted_game_file_is_an_error_naming_it(tmp_path):
    trial = tmp_path / "json_2.1.1" / "train" / "task" / "trial"
    shutil.copytree(REAL_GAME, trial)
    (trial / "game.tw-pddl").write_text('{"pddl_domain": ')
    env = gym.make("alfworld/ALFWorld-v0", data_root=tmp_path, split="train")
    with pytest.raises(GameDataError, match="game.tw-pddl"):
        env.reset(seed=0)


@pytest.mark.parametrize("game", [1.0, None, True, [0], {}])
def test_a_game_option_of_another_type_is_a_value_error(real_env, game):
    with pytest.raises(ValueError, match="index or a game file"):
        real_env.reset(options={"game": game})


@pytest.mark.parametrize("broken, text", [("game.tw-pddl", "[1, 2]"), ("traj_data.json", "[1, 2]")])
def test_a_game_of_json_that_is_not_an_object_is_a_game_data_error(tmp_path, broken, text):
    trial = tmp_path / "json_2.1.1" / "train" / "task" / "trial"
    shutil.copytree(REAL_GAME, trial)
    (trial / broken).write_text(text)
    env = gym.make("alfworld/ALFWorld-v0", data_root=tmp_path, split="train")
    with pytest.raises(GameDataError, match=broken):
        env.reset(seed=0)
    env.close()


def test_a_failed_reset_closes_the_engine_and_step_asks_for_reset(tmp_path):
    good = tmp_path / "json_2.1.1" / "train" / "good" / "trial"
    bad = tmp_path / "json_2.1.1" / "train" / "bad" / "trial"
    shutil.copytree(REAL_GAME, good)
    shutil.copytree(REAL_GAME, bad)
    (bad / "game.tw-pddl").write_text("[1, 2]")
    env = gym.make("alfworld/ALFWorld-v0", data_root=tmp_path, split="train")
    env.reset(options={"game": good / "game.tw-pddl"})
    engine = env.unwrapped._engine
    closed = []
    original_close = engine.close
    engine.close = lambda: (closed.append(True), original_close())[1]  # observe the old engine's close
    with pytest.raises(GameDataError):
        env.reset(options={"game": bad / "game.tw-pddl"})
    assert closed and env.unwrapped._engine is None
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(answer("look"))
    obs, info = env.reset(options={"game": good / "game.tw-pddl"})  # and the env plays on after a good reset
    assert info["task"] and obs.shape[-1] == 3
    env.close()


def test_a_floor_plan_outside_the_layouts_folder_is_not_read():
    from alfworld_bridge.render import floor_plan_of

    assert floor_plan_of({"scene": {"floor_plan": "../../etc/passwd"}}) is None
    assert floor_plan_of({"scene": {"floor_plan": "FloorPlan14"}}) == "FloorPlan14"
    assert floor_plan_of({"scene": {"scene_num": 7}}) == "FloorPlan7"


def test_every_split_folder_of_the_download_is_accepted(tmp_path):
    trial = tmp_path / "json_2.1.1" / "valid_train" / "task" / "trial"
    shutil.copytree(REAL_GAME, trial)
    assert find_games(tmp_path, "valid_train") == [trial / "game.tw-pddl"]


TASK_TYPES = ["pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place"]


def _play_oracle(env, detours: int = 0, seed: int = 0, **reset):
    rng = np.random.default_rng(seed)
    _, info = env.reset(**reset)
    steps, done = 0, False
    while not done:
        if steps < detours:  # random admissible moves first: the oracle must recover from them
            commands = info["admissible_commands"]
            text = answer(commands[int(rng.integers(len(commands)))])
        else:
            text = env.unwrapped.oracle_answer()
        _, _, terminated, truncated, info = env.step(text)
        steps, done = steps + 1, terminated or truncated
    return info, steps


@pytest.mark.slow
@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_the_oracle_wins_every_task_type_even_after_random_moves(toy_root, tmp_path, task_type):
    env = gym.make("alfworld/ALFWorld-v0", data_root=toy_root / task_type, split=None, cache_dir=tmp_path)
    for detours in (0, 4):
        info, _ = _play_oracle(env, detours=detours, seed=detours)
        assert info["won"] and info["goal_condition_success_rate"] == 1.0, (task_type, detours)
    env.close()


def test_the_oracle_wins_the_real_game_directly_and_after_detours(real_env):
    info, steps = _play_oracle(real_env)
    assert info["won"] and steps <= 16  # the game's own expert walkthrough takes 16
    for seed in range(2):
        info, _ = _play_oracle(real_env, detours=5, seed=seed)
        assert info["won"], seed


def test_the_oracle_answer_is_the_prompt_json_with_thoughts_about_the_task(real_env):
    real_env.reset()
    unwrapped = real_env.unwrapped
    answer_json = json.loads(unwrapped.oracle_answer())
    assert list(answer_json) == ["thoughts", "action"]
    assert answer_json["action"] == unwrapped.oracle_action() in unwrapped.admissible_commands
    assert answer_json["thoughts"].startswith(f"My task is to {unwrapped.task}.")
    assert json.loads(unwrapped.oracle_answer(chain_of_thought=False)) == {"action": answer_json["action"]}
    with pytest.raises(RuntimeError, match="no episode in progress"):
        gym.make("alfworld/ALFWorld-v0", data_root=SAMPLE, split="train").unwrapped.oracle_action()


@pytest.mark.slow
def test_demonstrations_are_recorded_on_alfworld(sample_root, tmp_path):
    from vlm_policy.training.demos import read_demonstrations, write_demonstrations

    path = write_demonstrations("alfworld/ALFWorld-v0", 8, tmp_path / "demos", seed=0,
                                env_kwargs={"data_root": str(sample_root), "split": "train", "image_size": 64})
    examples = read_demonstrations(path)
    assert len(examples) == 8 and examples[0].image.shape == (64, 64, 3)
    assert all(json.loads(e.answer)["action"] for e in examples)
    assert "pick_heat_then_place_in_recep" in examples[0].state


def test_a_game_built_by_several_builders_at_once_is_whole(sample_root, tmp_path):
    # Envs in subprocesses (SubprocVecEnv) may build the same game file from raw data together.
    from concurrent.futures import ThreadPoolExecutor

    from alfworld_bridge.games import build_game_file

    raw = tmp_path / "raw" / "trial"
    raw.mkdir(parents=True)
    for name in ("initial_state.pddl", "traj_data.json"):
        shutil.copy(REAL_GAME / name, raw / name)
    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(lambda _: build_game_file(raw, tmp_path / "cache"), range(8)))
    assert len(set(built)) == 1 and json.loads(built[0].read_text())["pddl_problem"]
    assert not list(built[0].parent.glob("*.tmp"))  # no temporary file left behind


def test_history_length_puts_the_last_steps_into_the_prompt(sample_root):
    env = gym.make("alfworld/ALFWorld-v0", data_root=sample_root, split="train", history_length=2)
    _, info = env.reset(seed=0)
    assert "Your last" not in info["prompt"]  # nothing played yet
    first_view = info["observation_text"]
    played = []
    for _ in range(3):
        command = env.unwrapped.oracle_action()
        _, _, _, _, info = env.step(answer(command))
        played.append(command)
    prompt = info["prompt"]
    assert "Your last 2 steps, oldest first:" in prompt
    assert f"You did: {played[1]}\n" in prompt and f"You did: {played[2]}\n" in prompt
    assert prompt.count("You did:") == 2 and first_view.strip() not in prompt.split("What you see now:")[0]
    assert prompt.index(f"You did: {played[1]}") < prompt.index(f"You did: {played[2]}")
    assert "Your last" in info["action_only_prompt"]
    _, info = env.reset(seed=1)
    assert "Your last" not in info["prompt"]  # a new episode starts with no memory
    with pytest.raises(ValueError, match="history_length must be >= 0"):
        gym.make("alfworld/ALFWorld-v0", data_root=sample_root, split="train", history_length=-1)
    env.close()


def test_expert_labels_name_the_experts_command_in_every_state_an_agent_reaches(sample_root):
    from gym_vlm_cards.parsing import read_action
    from vlm_policy.training.relabel import ExpertLabels

    sink = []
    env = ExpertLabels(gym.make("alfworld/ALFWorld-v0", data_root=sample_root, split="train"), True, sink)
    _, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    admissible = [info["admissible_commands"]]
    for _ in range(4):  # an agent that wanders: the expert replans from wherever it is
        _, _, terminated, truncated, info = env.step(answer(str(rng.choice(admissible[-1]))))
        admissible.append(info["admissible_commands"])
    assert len(sink) == 5 and [record["step"] for record, _ in sink] == [0, 1, 2, 3, 4]
    for (record, image), commands in zip(sink, admissible):
        command = read_action(record["messages"][1]["content"][0]["text"]).value
        assert command in commands and image.shape == (300, 300, 3)
    env.close()
