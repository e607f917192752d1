"""benchmarks/gpu_check.py, scaled down to the CPU: it must keep working for the day a GPU is at hand."""

import math

import pytest
from helpers import load_script


def _gpu_check():
    return load_script("benchmarks/gpu_check.py")


@pytest.mark.slow
def test_gpu_check_runs_a_scaled_down_architecture_on_the_cpu(tmp_path, capsys):
    rows = _gpu_check().main(["--arch", "small", "--device", "cpu", "--n-envs", "2", "--n-steps", "2",
                              "--max-new-tokens", "12", "--micro-batch-size", "2", "--lora-r", "4",
                              "--json", str(tmp_path / "rows.json")])
    by_mode = {row["rollout_logprobs"]: row for row in rows}
    assert set(by_mode) == {"generate", "recompute"}
    # Recomputed old log-probabilities are the update's own: PPO's first ratio is exactly 1.
    assert by_mode["recompute"]["first_minibatch_max_abs_ratio_minus_1"] == 0.0
    for row in rows:
        assert row["rollout_env_steps_per_s"] > 0 and row["update_seconds"] > 0
        assert math.isfinite(row["first_minibatch_max_abs_ratio_minus_1"])
    assert "max |ratio-1|" in capsys.readouterr().out and (tmp_path / "rows.json").is_file()
