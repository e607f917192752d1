"""`vlm-cards sweep`: per-seed runs, the mean ± sd table and the one plot."""

import json
import statistics

import pytest

from tests.test_main_job import _micro_config
from vlm_policy.training.cli import parse
from vlm_policy.training.configs import TrainConfig
from vlm_policy.training.sweep import SeedOutcome, SweepOptions, format_report, run_sweep, summary, train_argv


def test_the_child_command_line_reproduces_the_config_exactly():
    config = TrainConfig.from_settings(seed=3, out_dir="x/seed_3", progress=False, train_vision=False, kl_coef=0.25,
                         env_id="gym_cards/EZPoints-v0", dtype="float32")
    command, groups = parse(train_argv(config))
    assert command == "train" and TrainConfig.from_groups(*groups[:-1]) == config
    assert parse(train_argv(config, resume=True))[1][-1].resume


def test_the_table_reports_each_seed_and_the_mean_and_sd_of_those_that_finished():
    outcomes = [SeedOutcome(0, "a", 0.5, 1.0, 10.0, sft_steps=70), SeedOutcome(1, "b", 0.7, 0.95, 12.0),
                SeedOutcome(2, "c", error="exit status 1")]
    stats = summary(outcomes)
    assert stats["seeds"] == [0, 1] and stats["failed"] == [2]
    assert stats["gain"]["mean"] == pytest.approx(37.5)
    assert stats["gain"]["sd"] == pytest.approx(statistics.stdev([50.0, 25.0]))
    table = format_report(TrainConfig(), outcomes)
    assert "| 0 | 50.0% | 100.0% | +50.0 | 70 | 10 s |" in table and "| 2 | failed: exit status 1" in table
    assert "| 1 | 70.0% | 95.0% | +25.0 |  | 12 s |" in table  # an older run's SFT: no step count
    assert "| mean ± sd (2) | 60.0 ± 14.1% | 97.5 ± 3.5% | +37.5 ± 17.7 |" in table


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--seeds", "1", "1"], "has a seed twice"),
    (["sweep", "--parallel", "0"], "--parallel must be >= 1"),
    (["sweep", "--seeds", "-1"], "--seeds must be >= 0"),
])
def test_bad_sweep_options_are_refused_when_parsed(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_a_two_seed_sweep_in_parallel_runs_both_and_writes_the_table_and_plot(tmp_path):
    config = _micro_config(tmp_path / "sweep", demos=8, eval_episodes=2, ppo_check_episodes=1)
    outcomes = run_sweep(config, SweepOptions(seeds=[4, 5], parallel=2))
    assert [o.seed for o in outcomes] == [4, 5] and not any(o.error for o in outcomes)
    for seed in (4, 5):
        run = tmp_path / "sweep" / f"seed_{seed}"
        assert json.loads((run / "config.json").read_text())["common"]["seed"] == seed
        assert (run / "train.log").is_file() and (run / "ppo" / "final.zip").is_file()
        assert (run / "train.log").read_text().count("== demos:") == 1  # each line once in a seed's log
    demos = [(tmp_path / "sweep" / f"seed_{s}" / "demos" / "demos.jsonl").read_text() for s in (4, 5)]
    assert demos[0] != demos[1]  # the seed reached each run
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert report["summary"]["seeds"] == [4, 5] and "gain" in report["summary"]
    assert "mean ± sd (2)" in (tmp_path / "sweep" / "sweep.md").read_text()
    assert [seed["sft_steps"] for seed in report["seeds"]] == [config.sft.sft_steps] * 2
    assert (tmp_path / "sweep" / "learning_curves.png").stat().st_size > 10_000
