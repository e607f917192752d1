import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from vlm_policy.training import cli
from vlm_policy.training.configs import TRAIN_GROUPS
from vlm_policy.training.demos import answer_token_budget, read_answers, read_demonstrations, write_demonstrations
from vlm_policy.training.pipeline import Pipeline, TrainConfig, cosine_schedule, latest_checkpoint
from vlm_policy.training.stage_records import SettingsChanged, StageRecords
from vlm_policy.training.stages import Evaluation, ProximalPolicyOptimization


def _digest(directory: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            hasher.update(path.name.encode() + path.read_bytes())
    return hasher.hexdigest()


def test_demonstrations_are_reproducible_chat_messages(tmp_path):
    write_demonstrations("gym_cards/EZPoints-v0", 12, tmp_path / "a", seed=3, env_kwargs={"image_size": 64})
    write_demonstrations("gym_cards/EZPoints-v0", 12, tmp_path / "b", seed=3, env_kwargs={"image_size": 64})
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    records = [json.loads(line) for line in (tmp_path / "a" / "demos.jsonl").read_text().splitlines()]
    assert len(records) == 12
    user, assistant = records[0]["messages"]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    assert (tmp_path / "a" / user["content"][0]["image"]).is_file()
    answer = json.loads(assistant["content"][0]["text"])
    assert list(answer)[-2:] == ["thoughts", "action"]
    examples = read_demonstrations(tmp_path / "a")
    assert examples[0].image.shape == (64, 64, 3) and examples[0].state


def test_unreadable_demonstrations_are_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="vlm-cards demos"):
        read_demonstrations(tmp_path)
    (tmp_path / "demos.jsonl").write_text('{"messages": []}\n')
    with pytest.raises(ValueError, match="demos.jsonl:1"):
        read_demonstrations(tmp_path)


def test_answer_budget_fits_the_longest_answer_and_its_end_token():
    assert answer_token_budget(19) == 40  # the floor
    assert answer_token_budget(61) == 64
    assert answer_token_budget(63) == 64 and answer_token_budget(64) == 72
    assert answer_token_budget(5, floor=1) == 8


def test_pipeline_sizes_the_answer_budget_from_the_demonstrations(tmp_path):
    from vlm_policy.loading import load_processor

    tokenizer = load_processor("tiny").tokenizer
    config = _micro_config(tmp_path / "p24", env_id="gym_cards/Points24-v0", demos=40, max_new_tokens=0)
    pipeline = Pipeline(config)
    assert not (tmp_path / "p24").exists()  # making a pipeline writes nothing
    demos = pipeline.demos.make()
    longest = max(len(tokenizer(a, add_special_tokens=False).input_ids) for a in read_answers(demos))
    assert longest > 40  # Points24's answers do not fit the old fixed default
    budget = pipeline.demos.answer_budget(demos)
    assert longest < budget <= longest + 8 and budget % 8 == 0
    numberline = Pipeline(_micro_config(tmp_path / "nl", max_new_tokens=0))
    assert numberline.demos.answer_budget(numberline.demos.make()) == 40 == numberline.demos.answer_rule()
    # config.json holds the measured length; the stage records hold the rule (0), and a run that spells out
    # the length the rule measures (as `--config run/config.json` does) matches them, another does not.
    numberline._write_config(40)
    assert json.loads((tmp_path / "nl" / "config.json").read_text())["run"]["max_new_tokens"] == 40
    auto = StageRecords(tmp_path / "nl", numberline.config)
    for stage in ("demos", "sft", "ppo"):
        auto.begin(stage)
        (tmp_path / "nl" / stage).mkdir(exist_ok=True)
    assert auto.wanted["ppo"]["max_new_tokens"] == 0

    def check(length: int) -> list[str]:
        spelled = _micro_config(tmp_path / "nl", max_new_tokens=length)
        return StageRecords(tmp_path / "nl", spelled, answer_rule=numberline.demos.answer_rule).check({}, overwrite=False)

    assert check(40) == []
    with pytest.raises(SettingsChanged, match="max_new_tokens: 0 -> 48"):
        check(48)
    too_short = Pipeline(_micro_config(tmp_path / "p24", env_id="gym_cards/Points24-v0", demos=40, max_new_tokens=40))
    with pytest.raises(ValueError, match=f"longest demonstration answer \\({longest} tokens\\)"):
        too_short.demos.answer_budget(demos)


def test_cosine_schedule_runs_from_start_to_end():
    schedule = cosine_schedule(1e-3, 1e-5)
    assert schedule(1.0) == pytest.approx(1e-3) and schedule(0.0) == pytest.approx(1e-5)
    assert 1e-5 < schedule(0.5) < 1e-3


def test_the_learning_rate_is_constant_unless_an_end_is_given():
    from vlm_policy.training.cli import build_parser

    # --learning-rate alone is a constant rate (never a cosine rising to another default).
    assert TrainConfig.from_settings(learning_rate=1e-5).ppo.learning_rate_end == 1e-5
    assert TrainConfig.from_settings(learning_rate=1e-5, learning_rate_end=1e-9).ppo.learning_rate_end == 1e-9
    parsed = build_parser().parse_args(["train", "--learning-rate", "1e-5", "--no-progress"])
    assert parsed.learning_rate_end is None  # resolved by the config, not by the parser


def test_a_record_holding_a_removed_setting_matches_only_at_the_value_this_version_runs_as():
    from vlm_policy.training.stage_records import differences, stage_settings

    wanted = stage_settings(TrainConfig())["ppo"]
    assert differences({**wanted, "normalize_advantage": True}, wanted) == []
    assert differences({**wanted, "normalize_advantage": False}, wanted) == ["normalize_advantage: False -> '<unset>'"]


def test_each_stage_records_every_setting_of_its_group_and_a_new_setting_joins_its_record():
    from dataclasses import dataclass, field, fields

    from vlm_policy.training import stage_records
    from vlm_policy.training.configs import PPOConfig

    # ALFWorld with every lever on, so that no setting is left out for being off.
    config = TrainConfig.from_settings(env_id="alfworld/ALFWorld-v0", history_length=2, relabel_rounds=1, constrain_actions=True,
                         ppo_check_every=2, sft_stop_success=0.5, sft_stop_reach=0.5,
                         max_new_tokens=64, max_episode_steps=30)
    records = stage_records.stage_settings(config)
    by_stage = {"demos": records["demos"], "sft": records["sft"], "relabel": records["relabel"],
                "evaluation": records["after PPO"], "ppo": records["ppo"]}
    for stage, group in stage_records.STAGE_GROUPS.items():
        expected = {item.name for item in fields(getattr(config, group))} - stage_records.NOT_RESULT_SETTINGS
        assert expected | set(stage_records.BORROWED_SETTINGS[stage]) <= set(by_stage[stage]), stage

    @dataclass
    class WiderPPO(PPOConfig):  # a setting added to PPO's group is in PPO's record with nothing else to edit
        new_setting: int = field(default=3, metadata={"help": "a new PPO setting"})

    wider = stage_records.stage_settings(TrainConfig(ppo=WiderPPO()))
    assert wider["ppo"]["new_setting"] == 3 and wider["after PPO"]["ppo"]["new_setting"] == 3
    assert "new_setting" not in wider["sft"] and "new_setting" not in wider["after SFT"]


def test_settings_added_later_are_recorded_only_when_set():
    from vlm_policy.training.stage_records import stage_settings

    # Run folders made before these settings, with them off, still match.
    default = stage_settings(TrainConfig.from_settings(sft_stop_reach=0.0, ppo_check_every=0))
    assert not {"sft_stop_success", "sft_stop_reach", "sft_check_every", "sft_check_episodes",
                "temperature"} & set(default["sft"])
    assert not {"ppo_check_every", "ppo_check_episodes",
                "ppo_keep_best", "ppo_stop_success"} & set(default["ppo"])
    # The main job stops SFT on reach 0.7 by default, recorded as that stop (a folder made with the flag
    # spelled out matches); SFT alone has no validation episodes, so its default is no stop.
    from vlm_policy.training.configs import DEFAULT_STOP_REACH, SFTConfig

    assert DEFAULT_STOP_REACH == 0.7
    # PPO's default budget is whole rollouts, also split over 2 or 4 data-parallel processes.
    default_ppo = TrainConfig()
    assert default_ppo.ppo.ppo_timesteps == 8192
    assert all(default_ppo.ppo.ppo_timesteps % (default_ppo.ppo.n_envs * default_ppo.ppo.n_steps * n) == 0 for n in (1, 2, 4))
    assert TrainConfig().sft.stop_targets() == {"reach": 0.7} and SFTConfig().stop_targets() == {}
    assert stage_settings(TrainConfig())["sft"] == stage_settings(TrainConfig.from_settings(sft_stop_reach=0.7))["sft"]
    assert stage_settings(TrainConfig())["sft"] != stage_settings(TrainConfig.from_settings(sft_stop_reach=0.9))["sft"]
    checked = stage_settings(TrainConfig())["ppo"]  # the checks are on by default for the card tasks
    assert (checked["ppo_check_every"], checked["ppo_check_episodes"], checked["ppo_keep_best"],
            checked["ppo_stop_success"]) == (2, 64, True, 1.0)  # the rule's value, not the word for it
    assert checked["sft"]["balance_states"] == "auto"
    alfworld = stage_settings(TrainConfig.from_settings(env_id="alfworld/ALFWorld-v0", sft_stop_reach=0.0))["ppo"]
    assert "ppo_check_every" not in alfworld  # off by default on ALFWorld, and so is the reach stop
    alfworld_sft = stage_settings(TrainConfig.from_settings(env_id="alfworld/ALFWorld-v0"))["sft"]
    assert "sft_stop_reach" not in alfworld_sft and "sft_check_episodes" not in alfworld_sft
    # The reach is measured at PPO's temperature: with it on, SFT's record holds the temperature.
    reach = stage_settings(TrainConfig.from_settings(sft_stop_reach=0.9, temperature=0.3))
    assert reach["sft"]["sft_stop_reach"] == 0.9 and reach["sft"]["temperature"] == 0.3
    chosen = stage_settings(TrainConfig.from_settings(sft_stop_success=0.7, learning_rate=1e-5))
    assert chosen["sft"]["sft_stop_success"] == 0.7 and chosen["sft"]["sft_check_episodes"] == 64
    assert chosen["ppo"]["learning_rate_end"] == 1e-5 and chosen["ppo"]["sft"] == chosen["sft"]


def test_a_config_holds_every_rule_resolved_and_old_records_of_the_rules_still_match(tmp_path):
    from dataclasses import asdict

    from vlm_policy.training.stage_records import StageRecords

    config = TrainConfig()
    assert (config.sft.vision_warmup_steps, config.sft.sft_stop_reach, config.ppo.ppo_check_every, config.evaluation.eval_batch,
            config.ppo.lora_r, config.ppo.learning_rate) == (150, 0.7, 2, 64, 0, 2.5e-5)
    assert TrainConfig.from_dict(asdict(config)) == config == TrainConfig.from_settings(**config.settings())
    # Nothing left to a marker but the answer length (measured from the demonstrations) and the machine's rules.
    assert (config.task.max_episode_steps, config.model.gradient_checkpointing) == (10, "off")
    assert TrainConfig.from_settings(model=str(tmp_path)).model.gradient_checkpointing == "on"
    alfworld = TrainConfig.from_settings(env_id="alfworld/ALFWorld-v0")
    assert (alfworld.sft.sft_stop_reach, alfworld.ppo.ppo_check_every, alfworld.evaluation.eval_batch) == (0.0, 0, 8)
    assert TrainConfig.from_settings(model=str(tmp_path)).sft.vision_warmup_steps == 0
    # A folder an earlier version made recorded the rules as -1: it matches a run that leaves them to the rules.
    records = StageRecords(tmp_path, config)
    old_sft = {**records.wanted["sft"], "vision_warmup_steps": -1}
    old_ppo = {**records.wanted["ppo"], "ppo_check_every": -1, "sft": old_sft}
    assert records_differ(records, "sft", old_sft) == [] and records_differ(records, "ppo", old_ppo) == []
    # ... and the checkpointing rule as auto, and no step limit where the task's registered one was played.
    old_demos = {key: value for key, value in records.wanted["demos"].items() if key != "max_episode_steps"}
    assert "max_episode_steps" not in records.wanted["demos"]  # the registered limit: recorded as before
    assert records_differ(records, "demos", old_demos) == []
    assert records_differ(records, "sft", {**old_sft, "gradient_checkpointing": "auto"}) == []
    limited = StageRecords(tmp_path, TrainConfig.from_settings(max_episode_steps=7))
    assert records_differ(limited, "demos", old_demos) == ["max_episode_steps: '<unset>' -> 7"]
    assert records_differ(records, "demos", {**old_demos, "max_episode_steps": 10}) == []  # spelled out before
    chosen = StageRecords(tmp_path, TrainConfig.from_settings(vision_warmup_steps=20, ppo_check_every=4))
    assert records_differ(chosen, "sft", old_sft) == ["vision_warmup_steps: -1 -> 20"]
    assert records_differ(chosen, "ppo", old_ppo) == ["ppo_check_every: -1 -> 4", "vision_warmup_steps: -1 -> 20"]


def records_differ(records, stage: str, old: dict) -> list[str]:
    from vlm_policy.training.stage_records import differences

    return differences(old, records.wanted[stage], by_rule=records.by_rule, as_before=records.as_before)


def test_the_sft_stop_checks_leave_the_model_as_it_was(tmp_path):
    from vlm_policy.loading import load_vlm

    pipeline = Pipeline(_micro_config(tmp_path / "run", sft_stop_success=0.5, sft_check_episodes=2))
    bundle = load_vlm("tiny", seed=0)
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    measures = pipeline.sft.validation(24)(bundle, ["success", "reach"])
    assert measures["success"] in (0.0, 0.5, 1.0)  # 2 episodes
    assert measures["reach"] == 0.0  # a random model writes no oracle answer with 1% probability
    after = bundle.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _micro_config(out_dir: Path, **overrides) -> TrainConfig:
    values = dict(out_dir=str(out_dir), demos=24, sft_steps=3, vision_warmup_steps=2, sft_batch_size=4, ppo_timesteps=16, n_envs=2, n_steps=4,
                  batch_size=8, n_epochs=1, eval_episodes=3, max_new_tokens=24, ppo_check_episodes=2, max_episode_steps=2,
                  progress=False,
                  ppo_stop_success=0.0)  # 2 validation episodes are won by chance: PPO makes every step here
    values.update(overrides)
    return TrainConfig.from_settings(**values)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One micro run of the whole pipeline, shared by the tests that read its outputs."""
    config = _micro_config(tmp_path_factory.mktemp("main_job") / "run")
    rows = Pipeline(config).run()
    return Path(config.run.out_dir), rows


@pytest.mark.slow
def test_pipeline_runs_end_to_end(finished_run):
    run, rows = finished_run
    assert [r.name for r in rows] == ["after SFT", "after PPO"]
    assert all(r.episodes == 3 for r in rows)
    for name in ("learning_curve.png", "episode_strip.png", "results.json", "curve.jsonl", "ppo/final.zip",
                 "ppo/adapter/value_head.safetensors", "sft/config.json", "config.json"):
        assert (run / name).exists(), name
    assert latest_checkpoint(run / "ppo" / "checkpoints").name == "rl_model_16_steps.zip"
    assert list((run / "tb").rglob("events.out.tfevents.*"))
    assert json.loads((run / "config.json").read_text())["sft"]["sft_steps"] == 3
    log = (run / "train.log").read_text()  # the stage headers and the printed lines, in order
    headers = [line.split("== ")[1].split(":")[0] for line in log.splitlines() if " == " in line]
    assert headers == ["demos", "sft", "after SFT", "ppo", "after PPO"]
    assert "held-out episodes (seeds from" in log and " after PPO | 3 " in log
    assert "PPO made 16 env steps (--ppo-timesteps 16: the whole budget)" in log
    from transformers.utils import logging as transformers_logging

    assert not transformers_logging.is_progress_bar_enabled()  # --no-progress silences the libraries' bars too
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sft = EventAccumulator(str(run / "tb" / "sft"))
    sft.Reload()
    assert [e.step for e in sft.Scalars("sft/loss")] == [1, 2, 3]
    evaluation = EventAccumulator(str(run / "tb" / "evaluation"))
    evaluation.Reload()
    assert [e.step for e in evaluation.Scalars("evaluation/success_rate")][-2:] == [0, 1]
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags = {value.tag for events in (run / "tb").glob("ppo_*/events.*") for event in EventFileLoader(str(events)).Load()
            for value in event.summary.value}
    assert "_hparams_/session_start_info" in tags  # the settings in TensorBoard's HParams tab


def _policy_weights(agent_zip: Path) -> dict[str, torch.Tensor]:
    from stable_baselines3.common.save_util import load_from_zip_file

    return load_from_zip_file(agent_zip, load_data=False)[1]["policy"]


def _same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_ppo_plays_greedy_validation_checks_and_hands_over_the_best(finished_run):
    from vlm_policy.training.callbacks import kept_best, read_validation

    run = finished_run[0]
    checks = read_validation(run / "ppo" / "validation.jsonl")
    assert [c["timesteps"] for c in checks] == [0, 16]  # the SFT model and the last of the 2 updates
    kept = kept_best(run / "ppo" / "best")
    assert kept == max(checks, key=lambda c: c["success_rate"])  # ties: the earlier
    assert _same_weights(_policy_weights(run / "ppo" / "final.zip"), _policy_weights(run / "ppo" / "best" / "agent.zip"))


@pytest.mark.slow
def test_an_earlier_better_check_is_the_agent_handed_over(finished_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    scores = iter([0.5, 1.0, 0.5])  # the SFT model, after update 1, after update 2 (the last)
    monkeypatch.setattr(ProximalPolicyOptimization, "validation", lambda self, sft_dir, budget: lambda policy: next(scores))
    Pipeline(_micro_config(run, ppo_check_every=1)).run(overwrite=True)
    assert "PPO's agent is the one checked at 8 env steps: greedy answers win 100.0%" in capsys.readouterr().out
    final = _policy_weights(run / "ppo" / "final.zip")
    assert _same_weights(final, _policy_weights(run / "ppo" / "best" / "agent.zip"))
    last = _policy_weights(run / "ppo" / "checkpoints" / "rl_model_16_steps.zip")
    assert not _same_weights(final, last)  # the last update's agent is kept apart, not lost


@pytest.mark.slow
def test_ppo_stops_at_a_check_that_wins_the_stop_success(finished_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    scores = iter([0.5, 1.0, 0.5])  # the SFT model, after update 1 (the stop), never after update 2
    monkeypatch.setattr(ProximalPolicyOptimization, "validation", lambda self, sft_dir, budget: lambda policy: next(scores))
    Pipeline(_micro_config(run, ppo_check_every=1, ppo_stop_success=1.0)).run(overwrite=True)
    out = capsys.readouterr().out
    assert "PPO stops at 8 env steps: greedy answers win 100.0%" in out
    assert "PPO's agent is the one checked at" not in out  # the agent handed over is the last update's
    from vlm_policy.agents import read_agent_data
    from vlm_policy.training.callbacks import read_validation

    assert [c["timesteps"] for c in read_validation(run / "ppo" / "validation.jsonl")] == [0, 8]
    assert read_agent_data(run / "ppo" / "final.zip")["num_timesteps"] == 10  # the next rollout's first step
    final = _policy_weights(run / "ppo" / "final.zip")
    assert _same_weights(final, _policy_weights(run / "ppo" / "best" / "agent.zip"))


@pytest.mark.slow
def test_a_run_killed_before_ppo_began_goes_on_with_ppo(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    assert (run / "tb" / "sft").is_dir()  # SFT's loss curve: not an output of PPO, which had not begun
    for made_by_ppo in ("ppo", "curve.jsonl", "stages/ppo.json", "stages/after_PPO.json", "learning_curve.png",
                        "episode_strip.png", *[str(path.relative_to(run)) for path in (run / "tb").glob("ppo_*")]):
        shutil.rmtree(run / made_by_ppo) if (run / made_by_ppo).is_dir() else (run / made_by_ppo).unlink()
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({"after SFT": results["after SFT"]}))
    sft_stamp = (run / "sft" / "training.json").stat().st_mtime_ns
    rows = Pipeline(_micro_config(run)).run()
    assert [r.name for r in rows] == ["after SFT", "after PPO"] and (run / "ppo" / "final.zip").is_file()
    assert (run / "sft" / "training.json").stat().st_mtime_ns == sft_stamp


@pytest.mark.slow
def test_an_interrupted_run_resumes_without_redoing_work(finished_run, tmp_path, capsys):
    from vlm_policy.agents import load_agent, read_agent_data

    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    sft_stamp = (run / "sft" / "training.json").stat().st_mtime_ns
    # Killed after the first of the two updates: the final agent and the last checkpoint are gone.
    (run / "ppo" / "final.zip").unlink()
    (run / "ppo" / "checkpoints" / "rl_model_16_steps.zip").unlink()
    resumed = Pipeline(_micro_config(run)).run(resume=True)
    assert "resuming PPO from" in capsys.readouterr().out
    assert (run / "sft" / "training.json").stat().st_mtime_ns == sft_stamp  # SFT was not redone
    assert latest_checkpoint(run / "ppo" / "checkpoints").name == "rl_model_16_steps.zip"
    data = read_agent_data(run / "ppo" / "final.zip")
    assert (data["num_timesteps"], data["_n_updates"]) == (16, 2)  # each update made once
    assert len(resumed) == 2 and load_agent  # noqa: B015


@pytest.mark.slow
def test_changed_settings_stop_the_run_before_anything_is_touched(finished_run, tmp_path):
    from vlm_policy.training.stage_records import SettingsChanged

    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(SettingsChanged, match="env_id: 'gym_cards/NumberLine-v0' -> 'gym_cards/Blackjack-v0'") as refused:
        Pipeline(_micro_config(run, env_id="gym_cards/Blackjack-v0")).run()
    assert str(refused.value).count("env_id") == 1  # named once, not once per stage made from it
    with pytest.raises(SettingsChanged, match="n_epochs: 1 -> 2"):
        Pipeline(_micro_config(run, n_epochs=2)).run(resume=True)  # --resume refuses changed PPO settings
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert cli.main(["train", "--out-dir", str(run), "--demos", "24", "--no-progress"]) == 2


@pytest.mark.slow
def test_overwrite_redoes_only_the_changed_stages_and_those_made_from_them(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    final = (run / "ppo" / "final.zip").read_bytes()
    rows = Pipeline(_micro_config(run, eval_episodes=2)).run(overwrite=True)
    assert "--overwrite: redoing after SFT, after PPO" in capsys.readouterr().out
    assert [r.episodes for r in rows] == [2, 2]  # no table mixes two evaluations
    assert (run / "ppo" / "final.zip").read_bytes() == final  # PPO did not depend on it: kept
    assert json.loads((run / "config.json").read_text())["evaluation"]["eval_episodes"] == 2


@pytest.mark.slow
def test_eval_command_prints_the_model_random_and_oracle_rows(finished_run, capsys):
    run = finished_run[0]
    capsys.readouterr()
    # No --max-new-tokens: the agent's own 24 for the .zip (any other length is refused by the env
    # wrapper), enough for the oracle's answers for the SFT checkpoint.
    for model in (str(run / "sft"), str(run / "ppo" / "final.zip")):
        assert cli.main(["eval", "--model", model, "--env", "gym_cards/NumberLine-v0", "--episodes", "2", "--seed", "7"]) == 0
        out = capsys.readouterr().out
        names = [line.split("|")[0].strip() for line in out.splitlines()[3:]]
        assert names[1:] == ["random", "oracle"] and names[0].endswith(("sft", "final.zip"))


@pytest.mark.slow
def test_cnn_baselines_train_and_report(capsys):
    assert cli.main(["baseline", "--env", "gym_cards/NumberLine-v0", "--timesteps", "512", "--episodes", "10"]) == 0
    out = capsys.readouterr().out
    assert "CNN + PPO" in out and "CNN + MaskablePPO" in out


def test_train_help_shows_at_most_35_options_in_groups_and_help_all_every_setting(capsys):
    import re
    from dataclasses import fields

    def options(argv) -> list[str]:
        with pytest.raises(SystemExit):
            cli.main(argv)
        return re.findall(r"^  (-[-\w]+)", capsys.readouterr().out, flags=re.M)

    shown = options(["train", "--help"])
    assert len(shown) <= 35 and "--ppo-timesteps" in shown and "--gradient-checkpointing" not in shown
    assert "--gamma" not in shown and "--no-train-vision" in shown and "--train-vision" not in shown
    every = options(["train", "--help-all"])
    settings = {item.name for group in TRAIN_GROUPS for item in fields(group)}
    assert {"--" + name.replace("_", "-") for name in settings - {"env_id", "train_vision", "ppo_keep_best", "progress"}} \
        | {"--env", "--no-train-vision", "--no-ppo-keep-best", "--no-progress"} <= set(every)
    # An advanced setting is read as any other; a rule's default is written auto.
    _, groups = cli.parse(["train", "--gamma", "0.5", "--eval-batch", "auto", "--ppo-check-every", "auto"])
    config = TrainConfig.from_groups(*groups[:-1])
    assert config.ppo.gamma == 0.5 and config.evaluation.eval_batch == 64 and config.ppo.ppo_check_every == 2
    assert TrainConfig.from_settings(eval_batch="auto", learning_rate="auto") == TrainConfig()
    # `vlm-cards sft` has no validation episodes: the stop settings are not its options.
    assert "--sft-stop-reach" not in options(["sft", "--help-all"])


def test_paper_gpu_example_script_uses_only_real_flags():
    import shlex

    from vlm_policy.adapters import lora_alpha_for

    script = (Path(__file__).parents[1] / "examples" / "paper_gpu_run.sh").read_text()
    command = script.split("\nvlm-cards ", 1)[1].replace("\\\n", " ")
    for variable, value in (("$((STEPS_PER_UPDATE / 8))", "64"), ("${TASK,,}", "numberline"), ("${TASK}", "NumberLine"),
                            ("$CHECKPOINT", "/models/llava")):
        command = command.replace(variable, value)
    name, groups = cli.parse(shlex.split(command))
    config = TrainConfig.from_groups(*groups[:-1])
    assert name == "train" and config.task.env_id == "gym_cards/NumberLine-v0" and config.ppo.n_steps == 64
    # RL4VLM's run_nl.sh / main.py: LoRA r=128 with alpha 256 (twice the rank, as here) on the vision side
    # too, 128 answers per optimizer step (minibatch 1 x 128 accumulation steps here a minibatch of 128 in
    # micro-batches).
    assert config.ppo.lora_r == 128 and lora_alpha_for(config.ppo.lora_r) == 256 and config.ppo.train_vision
    assert config.ppo.batch_size == 128 and config.model.micro_batch_size == 4 and config.model.gradient_checkpointing == "on"
    assert config.ppo.temperature == 0.2 and config.ppo.max_grad_norm == 0.01 and config.ppo.value_gradients_to_model is True
    assert config.ppo.kl_coef == 0 and config.ppo.n_epochs == 4  # the paper's PPO: no KL penalty
    assert config.sft.sft_stop_reach == 0 and config.ppo.ppo_check_every == 0  # the paper's whole SFT, its last agent


def test_demos_and_sft_commands_write_a_checkpoint_the_policy_loads(tmp_path, capsys):
    from vlm_policy.loading import load_vlm

    assert cli.main(["demos", "--env", "gym_cards/NumberLine-v0", "--n", "16", "--out", str(tmp_path / "demos"),
                     "--image-size", "64"]) == 0
    assert cli.main(["sft", "--data", str(tmp_path / "demos"), "--out", str(tmp_path / "ckpt"), "--sft-steps", "2",
                     "--sft-batch-size", "4", "--vision-warmup-steps", "2", "--no-progress"]) == 0
    assert "saved the SFT checkpoint" in capsys.readouterr().out
    bundle = load_vlm(str(tmp_path / "ckpt"))
    assert bundle.family == "llava" and json.loads((tmp_path / "ckpt" / "training.json").read_text())["sft"]["sft_steps"] == 2


def test_the_learning_curve_skips_torn_lines_and_keeps_the_resumed_points(tmp_path):
    from vlm_policy.training.plots import read_curve

    curve = tmp_path / "curve.jsonl"
    curve.write_text('{"timesteps": 8, "success_rate": 0.1}\n{"timesteps": 16, "success_rate": 0.2}\n'
                     '{"timesteps": 16, "success_rate": 0.3}\n{"timesteps": 24, "succ')  # resumed at 8, then killed
    assert [(p["timesteps"], p["success_rate"]) for p in read_curve(curve)] == [(8, 0.1), (16, 0.3)]


def test_sft_runs_the_vision_warm_up_for_the_tiny_model_only(tmp_path, capsys):
    from vlm_policy.models.random_models import save_random_qwen2_vl
    from vlm_policy.training.configs import SFTConfig

    assert SFTConfig().warmup_steps_for("tiny") == 150 and SFTConfig().warmup_steps_for("/a/checkpoint") == 0
    qwen = save_random_qwen2_vl(tmp_path / "qwen")
    write_demonstrations("gym_cards/NumberLine-v0", 4, tmp_path / "demos", env_kwargs={"image_size": 56})
    # `vlm-cards sft` on a real architecture: no warm-up by default (it would fail on Qwen2-VL).
    assert cli.main(["sft", "--data", str(tmp_path / "demos"), "--out", str(tmp_path / "out"), "--model", str(qwen),
                     "--sft-steps", "1", "--sft-batch-size", "2", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "out" / "training.json").read_text())["sft"]["vision_warmup_steps"] == -1


@pytest.mark.slow
def test_a_torn_final_agent_is_not_taken_as_done(finished_run, tmp_path, capsys, monkeypatch):
    from vlm_policy.agents import read_agent_data

    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    final = run / "ppo" / "final.zip"
    final.write_bytes(final.read_bytes()[:300])
    evaluated = []
    original = Evaluation.evaluate
    monkeypatch.setattr(Evaluation, "evaluate", lambda self, *a, **k: evaluated.append(a[-1]) or original(self, *a, **k))
    rows = Pipeline(_micro_config(run)).run(resume=True)
    assert "is not whole" in capsys.readouterr().out
    assert read_agent_data(final)["num_timesteps"] == 16
    assert evaluated == ["after PPO"]  # the retrained agent is evaluated, not the torn one's result reused
    # Run again as it is: the whole agent and its evaluation stand, nothing is evaluated again.
    assert Pipeline(_micro_config(run)).run() == rows
    assert evaluated == ["after PPO"] and "nothing changed since" in capsys.readouterr().out


@pytest.mark.slow
def test_a_rerun_without_resume_refuses_to_drop_an_unfinished_ppo_stage(finished_run, tmp_path):
    from vlm_policy.training.run_folder import RunRefused

    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    (run / "ppo" / "final.zip").unlink()  # as Ctrl-C during PPO leaves it
    before = _files(run)
    with pytest.raises(RunRefused, match="saved at 16 env steps: rerun with --resume .* or --overwrite"):
        Pipeline(_micro_config(run)).run()
    assert _files(run) == before  # the checkpoints are all there


def _files(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_resume_with_a_larger_budget_continues_ppo(finished_run, tmp_path, capsys):
    from vlm_policy.agents import read_agent_data
    from vlm_policy.training.stage_records import SettingsChanged

    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    with pytest.raises(SettingsChanged, match="ppo_timesteps: 16 -> 24"):  # without --resume: refused
        Pipeline(_micro_config(run, ppo_timesteps=24)).run()
    rows = Pipeline(_micro_config(run, ppo_timesteps=24)).run(resume=True)
    assert "--resume: PPO continues to 24 env steps" in capsys.readouterr().out
    data = read_agent_data(run / "ppo" / "final.zip")
    assert (data["num_timesteps"], data["_n_updates"]) == (24, 3)  # the two updates made before, one more
    assert [r.name for r in rows] == ["after SFT", "after PPO"]
    assert json.loads((run / "stages" / "ppo.json").read_text())["ppo_timesteps"] == 24


@pytest.mark.slow
def test_an_agent_is_refused_on_another_task_unless_allowed(finished_run, capsys):
    from vlm_policy.agents import agent_answer_length, agent_base, load_agent, read_agent_data
    from vlm_policy.training.evaluation import eval_env_factory

    final = finished_run[0] / "ppo" / "final.zip"
    data = read_agent_data(final)
    assert data["policy_kwargs"]["env_id"] == "gym_cards/NumberLine-v0"
    make = eval_env_factory("gym_cards/Blackjack-v0", agent_base(final, data), agent_answer_length(data))
    with pytest.raises(ValueError, match="trained on gym_cards/NumberLine-v0, not gym_cards/Blackjack-v0"):
        load_agent(final, make())
    assert load_agent(final, make(), allow_other_env=True).policy.env_id == "gym_cards/NumberLine-v0"
    argv = ["eval", "--model", str(final), "--env", "gym_cards/Blackjack-v0", "--episodes", "2"]
    assert cli.main(argv) == 2
    assert "--allow-other-env" in capsys.readouterr().err


def test_ppo_with_a_vlm_policy_and_no_policy_kwargs_trains_what_the_main_job_trains(tmp_path):
    from stable_baselines3 import PPO

    from vlm_policy import VLMPolicy, make_vlm_vec_env
    from vlm_policy.defaults import CHECKPOINT_LORA_RANK, lora_rank_for

    pipeline = Pipeline(TrainConfig.from_settings(out_dir=str(tmp_path), device="cpu"))
    main_job = pipeline.ppo.policy_kwargs("tiny")
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=1, model="tiny", max_new_tokens=12)
    policy = PPO(VLMPolicy, env, n_steps=4, batch_size=4, device="cpu").policy  # only the model is named
    compared = ("temperature", "cot_weight", "lora_r", "train_vision", "value_lr_scale", "value_gradients_to_model",
                "kl_coef")
    assert {name: getattr(policy, name) for name in compared} == {name: main_job[name] for name in compared}
    # One rule for the LoRA rank in both places: every weight of the tiny model, an adapter on a checkpoint.
    assert lora_rank_for("tiny") == 0 and lora_rank_for("/models/llava") == CHECKPOINT_LORA_RANK
    assert TrainConfig.from_settings(model="tiny").ppo.lora_r == 0 and TrainConfig.from_settings(model="tiny", lora_r=4).ppo.lora_r == 4
    # and one rule for the learning rates: the tiny model trains every weight, a checkpoint an adapter
    tiny, checkpoint = TrainConfig.from_settings(model="tiny"), TrainConfig.from_settings(model="/models/llava")
    assert (tiny.sft.sft_learning_rate, tiny.ppo.learning_rate, tiny.ppo.learning_rate_end) == (1e-3, 2.5e-5, 2.5e-5)
    assert (checkpoint.sft.sft_learning_rate, checkpoint.ppo.learning_rate, checkpoint.ppo.learning_rate_end) == (
        2e-5, 1e-5, 1e-5)
    assert (checkpoint.ppo.lora_r, checkpoint.sft.sft_lora_r) == (CHECKPOINT_LORA_RANK, CHECKPOINT_LORA_RANK)
    assert TrainConfig.from_settings(model="/models/llava", learning_rate=3e-5).ppo.learning_rate_end == 3e-5


@pytest.mark.slow
def test_run_json_records_versions_machine_command_and_settings(finished_run):
    record = json.loads((finished_run[0] / "run.json").read_text())
    assert record["settings"] == json.loads((finished_run[0] / "config.json").read_text())
    assert torch.__version__.startswith(record["libraries"]["torch"])
    assert {"transformers", "peft", "stable-baselines3"} <= set(record["libraries"])
    assert record["device"] == "cpu" and record["processor"] and record["torch_threads"] >= 1
    assert record["package_version"] and record["command_line"] and record["earlier"] == []
    assert record["git"] is None or len(record["git"]["commit"]) == 40


@pytest.mark.slow
def test_a_runs_own_config_json_replays_it(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    stages = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.parts[len(run.parts)] in ("demos", "sft", "ppo")}
    config = str(finished_run[0] / "config.json")
    # Into its own folder: every stage matches the record, nothing is redone.
    assert cli.main(["train", "--config", config, "--out-dir", str(run)]) == 0
    assert {p: p.read_bytes() for p in stages} == stages
    assert len(json.loads((run / "run.json").read_text())["earlier"]) == 1  # the first run's record is kept
    # Into a fresh folder: the same demonstrations and the same SFT checkpoint, byte for byte.
    fresh = tmp_path / "fresh"
    assert cli.main(["train", "--config", config, "--out-dir", str(fresh)]) == 0
    for stage in ("demos", "sft"):
        assert _digest(fresh / stage) == _digest(finished_run[0] / stage), stage


def test_a_config_file_sets_defaults_that_flags_override(tmp_path):
    (tmp_path / "run.yaml").write_text("env_id: gym_cards/EZPoints-v0\nppo_timesteps: 1024\nsft_steps: 7\n")
    command, groups = cli.parse(["train", "--config", str(tmp_path / "run.yaml"), "--ppo-timesteps", "2048"])
    config = TrainConfig.from_groups(*groups[:-1])
    assert (command, config.task.env_id, config.ppo.ppo_timesteps, config.sft.sft_steps) == ("train", "gym_cards/EZPoints-v0", 2048, 7)
    (tmp_path / "bad.json").write_text('{"ppo_timestep": 1}')
    with pytest.raises(SystemExit):
        cli.parse(["train", "--config", str(tmp_path / "bad.json")])


def test_a_budget_that_is_not_whole_rollouts_warns_with_the_steps_made():
    with pytest.warns(UserWarning, match="PPO makes 256 env steps"):
        TrainConfig.from_settings(ppo_timesteps=32)
    from vlm_policy.training.baselines import baseline_steps

    with pytest.warns(UserWarning, match="each baseline makes 512 env steps"):
        assert baseline_steps(32) == 512
    assert baseline_steps(1024) == 1024


def test_the_top_level_help_answers_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom vlm_policy.training import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"
    assert "usage: vlm-cards" in out and ":mod:" not in out and "``" not in out


def test_train_help_answers_without_importing_transformers_with_transformers_own_parser():
    import subprocess
    import sys

    code = ("import sys\nfrom vlm_policy.training import cli\ntry:\n    cli.main(['train', '--help'])\n"
            "except SystemExit:\n    pass\nprint('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False" and "--ppo-timesteps" in out
    # The module loaded on its own is transformers' parser: the same options, types and defaults.
    from transformers import HfArgumentParser

    from vlm_policy.training.configs import PPOConfig

    def described(parser_class) -> list[tuple]:
        return [(tuple(a.option_strings), a.default, getattr(a.type, "__name__", a.type), a.choices)
                for a in parser_class(PPOConfig)._actions]

    alone = cli.standalone_hf_argument_parser()
    assert alone is not None and alone is not HfArgumentParser
    assert described(alone) == described(HfArgumentParser)


def test_the_log_tee_keeps_whole_lines_and_leaves_progress_bars_out(tmp_path, capsys):
    from vlm_policy.training.run_record import LogTee

    with LogTee(tmp_path / "train.log"):
        print("SFT step 10: reach 40%")
        print("half a ", end="")
        print("line", flush=True)
        print("\rSFT:  20%|██        | 30/150", end="")  # a bar's redraw: on the screen, not in the log
        print("\x1b[2K 100% ━━━ 16/16")
        print("last words", end="")
    logged = [line.split(" ", 1)[1] for line in (tmp_path / "train.log").read_text().splitlines()]
    assert logged == ["SFT step 10: reach 40%", "half a line", "last words"]
    assert "30/150" in capsys.readouterr().out  # the screen still got everything


def test_a_log_tee_writing_to_its_own_standard_output_writes_each_line_once(tmp_path):
    import subprocess
    import sys

    # As under `vlm-cards sweep`, whose runs' standard output is their train.log.
    log = tmp_path / "train.log"
    code = ("from vlm_policy.training.run_record import LogTee\n"
            f"with LogTee({str(log)!r}):\n    print('SFT step 10')\n    print('PPO update 1')\n")
    with open(log, "a") as stream:
        subprocess.run([sys.executable, "-c", code], stdout=stream, check=True)
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith(" SFT step 10") and lines[1].endswith(" PPO update 1")


@pytest.mark.slow
def test_relabelling_rounds_label_the_models_own_states_and_go_on_with_sft_with_constrained_actions(tmp_path):
    from vlm_policy.agents import agent_base, read_agent_data
    from vlm_policy.training.demos import read_answers, set_size
    from vlm_policy.training.stage_records import SettingsChanged, stage_settings

    run = tmp_path / "run"
    config = _micro_config(run, relabel_rounds=2, relabel_episodes=3, constrain_actions=True)
    rows = Pipeline(config).run()
    assert [r.name for r in rows] == ["after SFT", "after PPO"]
    for number in (1, 2):
        labels = run / "relabel" / f"round_{number}" / "demos"
        assert set_size(labels) >= 3  # at least one state per episode, each with the expert's answer
        assert all('"action"' in answer for answer in read_answers(labels))
        steps = json.loads((run / "relabel" / f"round_{number}" / "sft" / "training.json").read_text())["steps_done"]
        assert steps >= 1
        assert any((run / "tb" / f"relabel_{number}").iterdir())  # each round's loss curve beside SFT's
    # PPO starts from the last round's model, and the records say so.
    ppo_base = json.loads((run / "stages" / "ppo.json").read_text())["sft"]
    assert ppo_base["relabel_rounds"] == 2 and ppo_base["sft"] == stage_settings(config)["sft"]
    final = run / "ppo" / "final.zip"
    assert agent_base(final, read_agent_data(final)).endswith("relabel/round_2/sft")
    # A rerun with the same settings redoes nothing; without rounds the records differ and name the setting.
    assert Pipeline(_micro_config(run, relabel_rounds=2, relabel_episodes=3, constrain_actions=True)).run() == rows
    with pytest.raises(SettingsChanged, match="relabel_rounds"):
        Pipeline(_micro_config(run, relabel_episodes=3, constrain_actions=True)).run()
    # The constrained agent is recorded so, and `vlm-cards eval` plays it constrained.
    assert stage_settings(config)["after SFT"]["constrain_actions"] is True
    assert "constrain_actions" not in stage_settings(_micro_config(tmp_path / "other"))["ppo"]  # old folders match
    assert cli.main(["eval", "--model", str(final), "--env", "gym_cards/NumberLine-v0", "--episodes", "2"]) == 0
