"""ALFWorld through the training application: evaluation games, the per-task-type table, long
prompts, and `vlm-cards demos | train | eval --env alfworld/ALFWorld-v0` on the toy games."""

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import alfworld_bridge  # noqa: F401  (registers alfworld/ALFWorld-v0)
from alfworld_bridge.evaluation import Outcome, evaluation_games, per_type_table
from alfworld_bridge.goals import TASK_TYPES
from alfworld_bridge.toy_games import write_toy_games
from gym_vlm_cards import TextActionEnv
from vlm_policy.env_bridge import TokenActionWrapper, decode_prompt, fit_prompt, wrapper_for
from vlm_policy.loading import load_processor

ENV_ID = "alfworld/ALFWorld-v0"


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """A data root in the download's layout whose three splits each hold the six toy games (one per type)."""
    root = tmp_path_factory.mktemp("alfworld_toy")
    games = root / "toy"
    write_toy_games(games)
    for split in ("valid_train", "valid_seen", "valid_unseen"):
        (root / "json_2.1.1").mkdir(exist_ok=True)
        (root / "json_2.1.1" / split).symlink_to(games, target_is_directory=True)
    return root


@pytest.fixture
def game_cache(tmp_path, monkeypatch):
    """Game files built from the toy problems go under the test's folder (also in env subprocesses)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake_split(root: Path, per_type: dict[str, int]) -> Path:
    for task, count in per_type.items():
        for index in range(count):
            trial = root / "json_2.1.1" / "valid_seen" / f"{task}-Thing-{index}" / "trial_0"
            trial.mkdir(parents=True)
            (trial / "traj_data.json").write_text(json.dumps({"task_type": task}))
            (trial / "game.tw-pddl").write_text("{}")
    return root


def test_evaluation_games_take_the_task_types_in_turn(tmp_path):
    counts = dict(zip(TASK_TYPES, [3, 1, 2, 0, 2, 1]))
    root = _fake_split(tmp_path, counts)
    games = evaluation_games(root, "valid_seen")
    types = [json.loads((g.parent / "traj_data.json").read_text())["task_type"] for g in games]
    assert len(games) == 9 and len(set(games)) == 9
    present = [t for t in TASK_TYPES if counts[t]]
    assert types[:5] == present  # one of each type first
    assert [t for t in types[5:8]] == [t for t in TASK_TYPES if counts[t] >= 2]
    assert evaluation_games(root, "valid_seen", 3) == games[:3]


def test_the_table_has_a_cell_per_task_type_with_success_and_goal_conditions():
    outcome = {"game": "g", "episode_return": 0.0, "length": 5}
    rows = {"random": [Outcome(task_type="pick_and_place_simple", success=False, goal_condition_success_rate=0.5,
                               **outcome),
                       Outcome(task_type="pick_and_place_simple", success=True, goal_condition_success_rate=1.0, **outcome),
                       Outcome(task_type="look_at_obj_in_light", success=False, goal_condition_success_rate=0.0,
                               **outcome)]}
    lines = per_type_table(rows).splitlines()
    assert lines[0] == "| agent | Pick (2) | Look (1) | Clean (0) | Heat (0) | Cool (0) | Pick2 (0) | All (3) |"
    assert lines[2] == "| random | 50.0 / 75.0 | 0.0 / 0.0 | - | - | - | - | 33.3 / 50.0 |"


def test_the_env_is_built_on_the_text_action_core_and_has_no_discrete_mode(toy_data, game_cache):
    env = gym.make(ENV_ID, data_root=toy_data, split="valid_seen")
    assert isinstance(env.unwrapped, TextActionEnv) and env.unwrapped.actions_change
    _, info = env.reset(seed=0)
    assert env.unwrapped.available_actions() == info["admissible_commands"]
    _, reward, _, _, info = env.step("no json here")
    assert info["is_success"] is False and info["parsed_action"] is None
    assert reward == info["goal_condition_success_rate"] - 1.0
    env.close()


def test_a_long_prompt_is_cut_from_the_middle_and_the_cut_is_counted():
    tokenizer = load_processor("tiny").tokenizer
    text = "the task\n" + "\n".join(f"- go to drawer {i}" for i in range(200)) + "\nanswer in JSON"
    cut_text, cut = fit_prompt(text, 4096, 300, tokenizer)
    assert 0 < cut < 200 and len(tokenizer(cut_text, add_special_tokens=False).input_ids) <= 300
    lines = cut_text.splitlines()
    assert lines[0] == "the task" and lines[-1] == "answer in JSON" and lines[-2] == f"({cut} more lines cut to fit the model's context)"
    assert lines[1:-2] == [f"- go to drawer {i}" for i in range(200 - cut)]  # the first ones kept, in order
    assert fit_prompt("short\nprompt", 4096, 300, tokenizer) == ("short\nprompt", 0)
    with pytest.raises(ValueError, match="first and last lines alone do not fit"):
        fit_prompt("x" * 500 + "\nmiddle\nend", 4096, 50, tokenizer)


class _LongPromptEnv(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    action_space = gym.spaces.Text(100)

    def __init__(self, lines: int) -> None:
        self.lines = lines

    def _info(self):
        return {"prompt": "task\n" + "\n".join(f"- command number {i}" for i in range(self.lines)) + "\nreply"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((64, 64, 3), np.uint8), self._info()

    def step(self, action):
        self.lines += 50
        return np.zeros((64, 64, 3), np.uint8), 0.0, False, False, self._info()


def test_the_wrapper_warns_with_the_count_and_reports_it_in_info():
    wrap, _ = wrapper_for("tiny", max_new_tokens=8)
    fitted = wrap(_LongPromptEnv(10))
    assert fitted.max_prompt_tokens == 1024 - 68 - 8  # the tiny model's context less image, chat markers, answer
    obs, info = fitted.reset(seed=0)
    assert info["prompt_lines_cut"] == 0 and fitted.prompts_cut == 0
    small = TokenActionWrapper(_LongPromptEnv(100), fitted.tokenizer, max_new_tokens=8, max_prompt_tokens=200)
    with pytest.warns(UserWarning, match=r"too long for the model .* lines cut \(1 prompts cut so far\)"):
        obs, info = small.reset(seed=0)
    assert info["prompt_lines_cut"] > 0 and "more lines cut" in decode_prompt(obs["prompt"])
    with pytest.warns(UserWarning, match="2 prompts cut so far"):  # more lines cut than before: said again
        small.step(np.zeros(8, dtype=np.int64))
    assert small.prompts_cut == 2 and small.lines_cut > info["prompt_lines_cut"]


def test_data_options_belong_to_alfworld_alone():
    from vlm_policy.training.cli import parse

    with pytest.raises(SystemExit):
        parse(["demos", "--out", "x", "--split", "valid_seen"])  # a card task
    _, (run,) = parse(["demos", "--env", ENV_ID, "--out", "x", "--split", "valid_train", "--data-root", "d"])
    assert run.env_kwargs == {"split": "valid_train", "data_root": "d"}


@pytest.mark.slow
def test_demos_and_eval_commands_play_alfworld_games(toy_data, game_cache, tmp_path, capsys):
    from vlm_policy.training import cli
    from vlm_policy.training.demos import read_demonstrations

    assert cli.main(["demos", "--env", ENV_ID, "--data-root", str(toy_data), "--split", "valid_train", "--n", "8",
                     "--image-size", "64", "--out", str(tmp_path / "demos")]) == 0
    examples = read_demonstrations(tmp_path / "demos")
    assert len(examples) == 8 and all("go to" in e.prompt or "take" in e.prompt for e in examples)
    assert cli.main(["eval", "--env", ENV_ID, "--data-root", str(toy_data), "--split", "valid_unseen",
                     "--episodes", "6", "--batch", "2"]) == 0  # two env subprocesses
    table = capsys.readouterr().out
    assert "| oracle | 100.0 / 100.0 | 100.0 / 100.0 |" in table and "All (6)" in table
    assert "| random admissible command |" in table


@pytest.mark.slow
def test_train_runs_demos_sft_ppo_and_writes_the_per_task_type_table(toy_data, game_cache, tmp_path):
    from vlm_policy.training.cli import main, parse

    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["train", "--env", ENV_ID, "--data-root", str(toy_data), "--split", "valid_train", "--out-dir",
                     str(out), "--demos", "12", "--sft-steps", "2", "--vision-warmup-steps", "0", "--sft-batch-size", "4",
                     "--ppo-timesteps", "8", "--n-envs", "2", "--n-steps", "4", "--batch-size", "8", "--n-epochs", "1",
                     "--eval-episodes", "1", "--max-episode-steps", "4", "--progress", "false",
                     # ALFWorld's learning aids, all at once: legal-action decoding, a memory, one DAgger round.
                     "--constrain-actions", "true", "--history-length", "2", "--relabel-rounds", "1",
                     "--relabel-episodes", "1"])
    assert code == 0
    table = (out / "alfworld_table.md").read_text()
    assert table.count("| random admissible command |") == table.count("| after PPO |") == 2  # both splits
    assert "### valid_seen" in table and "### valid_unseen" in table
    oracle = [line for line in table.splitlines() if line.startswith("| oracle |")]
    assert all(line.endswith("| 100.0 / 100.0 |") for line in oracle)
    outcomes = [json.loads(line) for line in (out / "episodes" / "after_PPO.jsonl").read_text().splitlines()]
    assert [(o["split"], o["task_type"]) for o in outcomes] == [("valid_seen", TASK_TYPES[0]),
                                                                ("valid_unseen", TASK_TYPES[0])]
    results = json.loads((out / "results.json").read_text())
    assert results["after PPO"]["episodes"] == 2  # the first game of each of 2 splits
    assert all(o["length"] <= 4 for o in outcomes)  # --max-episode-steps holds in the evaluations too
    demos_record = json.loads((out / "stages" / "demos.json").read_text())
    assert demos_record["split"] == "valid_train" and demos_record["max_episode_steps"] == 4
    assert demos_record["history_length"] == 2
    assert "Your last" in (out / "demos" / "demos.jsonl").read_text()  # the prompts hold the memory
    labels = (out / "relabel" / "round_1" / "demos" / "demos.jsonl").read_text().splitlines()
    assert len(labels) >= 1 and all('"action"' in json.loads(line)["messages"][1]["content"][0]["text"] for line in labels)
    assert json.loads((out / "stages" / "ppo.json").read_text())["constrain_actions"] is True
    # The agent records how its observations were made: eval and play build the same env from it.
    agent = str(out / "ppo" / "final.zip")
    for command in ("eval", "play"):
        options = parse([command, "--env", ENV_ID, "--model", agent])[1][0]
        assert options.history_length == 2 and options.prompt_style == "cot" and options.constrain_actions is True
        assert options.alfworld_kwargs(["g"])["history_length"] == 2
    told = parse(["eval", "--env", ENV_ID, "--model", agent, "--history-length", "0", "--prompt-style", "action_only"])
    assert (told[1][0].history_length, told[1][0].prompt_style) == (0, "action_only")  # what is given wins


def test_the_alfworld_gpu_example_parses_with_the_papers_settings():
    import shlex

    from vlm_policy.training.cli import parse
    from vlm_policy.training.configs import TrainConfig

    script = (Path(__file__).parents[1] / "examples" / "train_alfworld_gpu.sh").read_text()
    command = script.split("\nvlm-cards ", 1)[1].replace("\\\n", " ")
    for variable, value in (('"$DATA"', "/data/alfworld"), ('"$SPLIT"', "train"), ('"$CHECKPOINT"', "/models/llava")):
        command = command.replace(variable, value)
    name, groups = parse(shlex.split(command))
    config = TrainConfig.from_groups(*groups[:-1])
    # RL4VLM's run_alf.sh: 1,024 env steps per update, 256 answers per optimizer step, lambda 0.2, 12,000 steps.
    assert name == "train" and config.task.env_id == ENV_ID and config.task.env_kwargs() == {
        "split": "train", "data_root": "/data/alfworld", "max_episode_steps": 50}
    assert config.ppo.n_envs * config.ppo.n_steps == 1024 and config.ppo.batch_size == 256 and config.ppo.cot_weight == 0.2
    assert config.ppo.ppo_timesteps == 12 * 1024 and config.ppo.n_epochs == 4 and config.ppo.temperature == 0.2
    assert config.ppo.learning_rate == 1e-5 and config.ppo.lora_r == 128 and config.ppo.train_vision and config.ppo.kl_coef == 0
    assert config.evaluation.eval_splits == ["valid_seen", "valid_unseen"]


def test_the_history_length_reaches_every_alfworld_env_of_a_run_and_its_records():
    from vlm_policy.training.configs import TrainConfig
    from vlm_policy.training.stage_records import stage_settings

    config = TrainConfig.from_settings(env_id="alfworld/ALFWorld-v0", history_length=2)
    # Legal-action decoding is ALFWorld's default, and only its: a card task and an explicit choice keep theirs.
    assert config.ppo.constrain_actions and not TrainConfig().ppo.constrain_actions
    assert not TrainConfig.from_settings(env_id="alfworld/ALFWorld-v0", constrain_actions=False).ppo.constrain_actions
    assert TrainConfig.from_settings(constrain_actions=True).ppo.constrain_actions
    assert config.task.env_kwargs()["history_length"] == 2 and config.task.play_kwargs()["history_length"] == 2
    assert stage_settings(config)["demos"]["history_length"] == 2
    assert "history_length" not in stage_settings(TrainConfig.from_settings(env_id="alfworld/ALFWorld-v0"))["demos"]
    with pytest.raises(ValueError, match="--history-length is ALFWorld's"):
        TrainConfig.from_settings(history_length=2)


def test_eval_and_play_give_an_alfworld_agent_the_memory_it_was_trained_with(capsys):
    from vlm_policy.training.cli import parse

    for command in ("eval", "play"):
        options = parse([command, "--env", ENV_ID, "--history-length", "2", "--model", "tiny"])[1][0]
        assert options.alfworld_kwargs(["g"]) == {"game_files": ["g"], "history_length": 2}
    assert parse(["eval", "--env", ENV_ID])[1][0].alfworld_kwargs(["g"]) == {"game_files": ["g"]}
    assert parse(["eval", "--env", ENV_ID, "--history-length", "auto"])[1][0].history_length == 0  # a checkpoint: none
    for argv in (["eval", "--history-length", "2"], ["eval", "--env", ENV_ID, "--history-length", "-1"]):
        with pytest.raises(SystemExit):
            parse(argv)
        assert "--history-length is ALFWorld's and >= 0" in capsys.readouterr().err
