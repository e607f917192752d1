"""benchmarks/gpu_check.py, scaled down to the CPU: it must keep working for the day a GPU is at hand."""

import math

import pytest
from helpers import load_script


def _gpu_check():
    return load_script("benchmarks/gpu_check.py")


@pytest.mark.slow
def test_gpu_check_compares_eager_and_merged_rollouts_in_bfloat16_on_the_cpu(tmp_path, capsys):
    rows = _gpu_check().main(["--arch", "llava-next-small", "--device", "cpu", "--dtype", "bfloat16", "--n-envs", "2",
                              "--n-steps", "2", "--max-new-tokens", "8", "--micro-batch-size", "2", "--lora-r", "4",
                              "--repeats", "1", "--rounds", "1", "--decoding", "eager", "merged", "--json", str(tmp_path / "rows.json")])
    by_decoding = {row["decoding"]: row for row in rows}
    assert set(by_decoding) == {"eager", "merged"}
    for row in rows:
        # bf16's default recomputes the old log-probabilities with the update's own (unmerged) forward:
        # PPO's first ratio is exactly 1 whether the rollout decoded merged or not.
        assert row["rollout_logprobs"] == "recompute" and row["first_minibatch_max_abs_ratio_minus_1"] == 0.0
        assert row["decode_tokens_per_s"] > 0 and row["rollout_env_steps_per_s"] > 0 and row["update_seconds"] > 0
        assert row["lora_r"] == 4 and math.isnan(row["update_peak_gib"])
    out = capsys.readouterr().out
    assert "x eager" in out and "merged" in out and (tmp_path / "rows.json").is_file()
