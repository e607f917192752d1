from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from helpers import load_script

from gym_vlm_cards import evaluate, play

ROOT = Path(__file__).parents[1]


def test_evaluate_prints_a_table(capsys):
    assert evaluate.main(["--env", "gym_cards/EZPoints-v0", "--episodes", "20", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "seeds 3..22" in lines[0]
    assert lines[1].split("|")[0].strip() == "agent"
    oracle = next(line for line in lines if line.strip().startswith("oracle"))
    assert "100.0%" in oracle


def test_evaluate_rejects_unknown_ids():
    with pytest.raises(SystemExit):
        evaluate.main(["--env", "gym_cards/Nope-v0"])


def test_play_reads_typed_actions_until_the_episode_ends(capsys):
    typed = iter(["+", '{"action": "+"}', "+", "+", "+", "+"])
    total = play.play("gym_cards/NumberLine-v0", seed=1, window=False, read=lambda _: next(typed))
    out = capsys.readouterr().out
    assert "Episode over: won" in out and total == 1.0


def test_play_with_a_window_draws_through_pygame(monkeypatch, capsys):
    import pygame

    frames = []
    flip = pygame.display.flip
    monkeypatch.setattr(pygame.display, "flip", lambda: frames.append(pygame.display.get_surface().copy()) or flip())
    typed = iter(["stand"])
    total = play.play("gym_cards/Blackjack-v0", seed=0, window=True, read=lambda _: next(typed))
    assert total in (-1.0, 0.0, 1.0) and "Episode over" in capsys.readouterr().out
    assert len(frames) >= 2  # the deal and the result were drawn
    assert frames[0].get_size() == (300, 300)
    assert len({pygame.image.tobytes(frame, "RGB") for frame in frames}) >= 2  # standing revealed the dealer's hand


def _load_example():
    return load_script("examples/custom_task.py")


def test_custom_task_example_registers_and_plays():
    module = _load_example()
    env = gym.make("my_tasks/ColourName-v0")
    check_env(env.unwrapped)
    _, info = env.reset(options={"colour": "green"})
    _, r, terminated, _, info = env.step('{"action": "GREEN"}')
    assert (r, terminated, info["is_success"]) == (1.0, True, True)
    env.reset(options={"colour": "blue"})
    assert env.step('{"action": "red"}')[1] == -1.0
    assert env.unwrapped.oracle_answer().endswith('"action": "blue"}')
    with pytest.raises(ValueError, match="colour"):
        env.reset(options={"colour": "pink"})
    assert isinstance(env.unwrapped, module.ColourNameEnv)


@pytest.mark.parametrize("command", ["train", "sweep", "sft", "eval", "demos", "baseline"])
def test_every_vlm_cards_command_prints_its_help(command, capsys):
    from vlm_policy.training import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: vlm-cards " + command in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["demos", "--out", "x", "--n", "-5"], "--n must be > 0"),
    (["eval", "--episodes", "-3"], "--episodes must be > 0"),
    (["eval", "--batch", "0"], "--batch must be > 0 (or auto)"),
    (["train", "--eval-batch", "0"], "--eval-batch must be > 0 (or auto)"),
    (["sft", "--data", "d", "--out", "o", "--sft-steps", "-5"], "--sft-steps must be > 0"),
    (["sft", "--data", "d", "--out", "o", "--sft-batch-size", "0"], "--sft-batch-size must be > 0"),
    (["train", "--n-envs", "0"], "--n-envs must be > 0"),
    (["train", "--gamma", "1.5"], "--gamma must be between 0 and 1"),
    (["train", "--batch-size", "512"], "larger than a rollout"),
])
def test_bad_numbers_are_refused_when_parsed(argv, message, capsys):
    from vlm_policy.training import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_task_registered_without_a_step_limit_gets_the_fallback_limit_with_a_warning():
    from gym_vlm_cards import Outcome
    from gym_vlm_cards.registration import FALLBACK_STEP_LIMIT
    from vlm_policy.training.cli import EvalOptions
    from vlm_policy.training.configs import TaskConfig

    module = _load_example()
    assert gym.spec("my_tasks/ColourName-v0").max_episode_steps == 1  # the example registers one

    class EndlessColour(module.ColourNameEnv):  # no answer ever ends an episode
        def _apply(self, action):
            return Outcome(0.0, terminated=False, success=False)

    gym.register(id="my_tasks/EndlessColour-v0", entry_point=EndlessColour)
    with pytest.warns(UserWarning, match="registered without max_episode_steps"):
        run = TaskConfig(env_id="my_tasks/EndlessColour-v0")
    assert run.max_episode_steps == FALLBACK_STEP_LIMIT == run.env_kwargs()["max_episode_steps"]
    assert TaskConfig(env_id="my_tasks/EndlessColour-v0", max_episode_steps=7).env_kwargs() == {"max_episode_steps": 7}
    with pytest.warns(UserWarning, match="registered without max_episode_steps"):
        options = EvalOptions(env="my_tasks/EndlessColour-v0", episodes=2)
    [result] = evaluate.evaluate_agents(options.env, ["oracle"], 2, 0, env_kwargs=options.env_kwargs, progress=False)
    assert result.mean_length == FALLBACK_STEP_LIMIT  # each episode ended, at the fallback limit


def test_evaluations_step_64_card_episodes_or_8_alfworld_games_together_by_default():
    from vlm_policy.training.configs import TrainConfig, eval_batch_for

    assert TrainConfig().evaluation.eval_batch == 64
    assert TrainConfig.from_settings(env_id="alfworld/ALFWorld-v0").evaluation.eval_batch == 8  # each env holds a loaded game
    assert TrainConfig.from_settings(eval_batch=5).evaluation.eval_batch == 5
    assert eval_batch_for("gym_cards/EZPoints-v0", -1) == 64


def test_the_cli_reference_in_docs_is_the_generated_one():
    from pathlib import Path

    from vlm_policy.training.cli import cli_reference

    # Rewrite it with: python -m vlm_policy.training.cli_reference > docs/cli.md
    assert (Path(__file__).parents[1] / "docs" / "cli.md").read_text() == cli_reference()


@pytest.mark.slow
def test_play_prints_every_step_and_records_a_gif(tmp_path, capsys):
    from PIL import Image

    from vlm_policy.training import cli

    gif = tmp_path / "watch" / "play.gif"
    assert cli.main(["play", "--model", "tiny", "--env", "gym_cards/NumberLine-v0", "--episodes", "2", "--seed", "5",
                     "--max-new-tokens", "8", "--record", str(gif)]) == 0
    out = capsys.readouterr().out
    steps = out.count("  step ")
    assert out.count("episode ") == 2 and steps >= 2
    with Image.open(gif) as image:
        assert image.n_frames == steps + 2  # every step, and each episode's last frame with its outcome
        assert image.size[0] == 384


def test_play_needs_a_model(capsys):
    from vlm_policy.training import cli

    with pytest.raises(SystemExit):
        cli.parse(["play", "--env", "gym_cards/NumberLine-v0"])
    assert "--model is needed" in capsys.readouterr().err


def test_the_readme_quick_start_is_examples_quickstart():
    from pathlib import Path

    root = Path(__file__).parents[1]
    readme = root.joinpath("README.md").read_text()
    block = readme.split("## Fine-tuning a VLM with PPO", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    script = {line.strip() for line in root.joinpath("examples", "quickstart.py").read_text().splitlines()}
    code = [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("config = ")]
    assert len(code) > 15 and [line for line in code if line not in script] == []


@pytest.mark.slow
def test_the_python_quickstart_runs_every_stage_with_tiny_settings(tmp_path, capsys):
    quickstart = load_script("examples/quickstart.py")
    before, after = quickstart.main(out_dir=str(tmp_path / "run"), demos=24, sft_steps=3, vision_warmup_steps=2,
                                    sft_batch_size=4, ppo_timesteps=16, n_envs=2, n_steps=4, batch_size=8, n_epochs=1,
                                    eval_episodes=3, max_new_tokens=24, ppo_check_episodes=2, max_episode_steps=4,
                                    progress=False)
    assert before.episodes == after.episodes == 3
    assert "success after SFT" in capsys.readouterr().out
    assert (tmp_path / "run" / "sft").is_dir() and (tmp_path / "run" / "validation.jsonl").is_file()
    assert (tmp_path / "run" / "agent.zip").is_file()
