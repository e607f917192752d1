"""The paper's 7B configuration on one GPU: one rollout and one PPO update, measured.

Builds a randomly initialised model of a real architecture (default LLaVA-1.6-Mistral-7B's: CLIP
ViT-L/14-336 with anyres tiles and Mistral-7B; or Qwen2.5-VL-3B / 7B), saves it as a checkpoint and
trains it through the path users take: ``PPO(VLMPolicy, make_vlm_vec_env(...))`` with LoRA r=128
(alpha 256, vision tower included), bf16 compute with fp32 trainable weights, gradient checkpointing
and micro-batches. For each ``rollout_logprobs`` mode it runs one rollout (the paper's 256 new tokens)
and one PPO update, and prints:

* rollout env-steps/s, the update's seconds and its peak GPU memory (``torch.cuda.max_memory_allocated``);
* the first minibatch's max |ratio - 1| before any update: how far the old log-probabilities PPO
  stored are from the update's own (0 means PPO starts exactly on-policy).

    python benchmarks/gpu_check.py                         # on a GPU: the 7B configuration
    python benchmarks/gpu_check.py --arch small --device cpu   # a scaled-down run in seconds (the tests run it)

A random model's answers never end early, so every answer runs to the full token budget: the
memory and time figures are the worst case for that budget.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from vlm_policy import VLMPolicy, make_vlm_vec_env
from vlm_policy.models import random_models

ARCHITECTURES = {
    "llava-next-mistral-7b": lambda d, device: random_models.save_random_llava_next(
        d, sizes=random_models.LLAVA_NEXT_MISTRAL_7B, device=device, dtype=torch.bfloat16),
    "qwen2.5-vl-3b": lambda d, device: random_models.save_random_qwen2_vl(
        d, sizes=random_models.QWEN2_5_VL_3B, version="2.5", image_size=336, device=device, dtype=torch.bfloat16),
    "qwen2.5-vl-7b": lambda d, device: random_models.save_random_qwen2_vl(
        d, sizes=random_models.QWEN2_5_VL_7B, version="2.5", image_size=336, device=device, dtype=torch.bfloat16),
    # LLaVA-NeXT's structure (anyres tiles, Mistral) at a size that runs on a CPU in seconds.
    "small": lambda d, device: random_models.save_random_llava_next(d, device=device, dtype=torch.bfloat16),
}


class _Measure(BaseCallback):
    """Times the rollout, then (before PPO trains on it) scores one minibatch with the update's forward
    and records the largest |ratio - 1|; resets the GPU's peak-memory counter for the update."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.figures: dict[str, float] = {}

    def _on_rollout_start(self) -> None:
        self._start = time.perf_counter()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.figures["rollout_seconds"] = time.perf_counter() - self._start
        policy = self.model.policy
        batch = next(self.model.rollout_buffer.get(self.batch_size))
        policy.set_training_mode(True)
        with torch.no_grad():
            _, log_prob, _ = policy.evaluate_actions(batch.observations, batch.actions)
        ratio = torch.exp(log_prob - batch.old_log_prob)
        self.figures["first_minibatch_max_abs_ratio_minus_1"] = float((ratio - 1).abs().max())
        _synchronize()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.figures["update_start"] = time.perf_counter()


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(arch: str, device: str, n_envs: int, n_steps: int, max_new_tokens: int, micro_batch_size: int, lora_r: int,
        directory: Path) -> list[dict]:
    start = time.perf_counter()
    ARCHITECTURES[arch](directory, device if device != "cpu" else None)
    print(f"built and saved a random {arch} in {time.perf_counter() - start:.0f} s", flush=True)
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=n_envs, model=str(directory), seed=0,
                           max_new_tokens=max_new_tokens)
    batch = n_envs * n_steps
    kwargs = {"model": str(directory), "lora_r": lora_r, "lora_alpha": 2 * lora_r, "train_vision": True,
              "dtype": "bfloat16", "gradient_checkpointing": True, "micro_batch_size": micro_batch_size,
              "temperature": 0.2, "cot_weight": 0.5, "kl_coef": 0.0, "compute_entropy": False, "device": device}
    start = time.perf_counter()
    model = PPO(VLMPolicy, env, n_steps=n_steps, batch_size=batch, n_epochs=1, learning_rate=1e-5, clip_range=0.1,
                max_grad_norm=0.01, gamma=0.9, gae_lambda=0.95, policy_kwargs=kwargs, device=device, seed=0)
    print(f"loaded the policy in {time.perf_counter() - start:.0f} s; trainable parameters "
          f"{sum(p.numel() for p in model.policy.parameters() if p.requires_grad) / 1e6:.0f}M", flush=True)
    rows = []
    for mode in ("generate", "recompute"):
        model.policy.rollout_logprobs = mode
        measure = _Measure(batch)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        model.learn(batch, callback=measure, reset_num_timesteps=False)
        _synchronize()
        figures = measure.figures
        row = {
            "arch": arch, "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            "rollout_logprobs": mode, "n_envs": n_envs, "answers_per_update": batch, "max_new_tokens": max_new_tokens,
            "micro_batch_size": micro_batch_size, "lora_r": lora_r,
            "rollout_env_steps_per_s": batch / figures["rollout_seconds"],
            "update_seconds": time.perf_counter() - figures["update_start"],
            "update_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
            "first_minibatch_max_abs_ratio_minus_1": figures["first_minibatch_max_abs_ratio_minus_1"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="llava-next-mistral-7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=2, help="rollout steps per env (answers = n_envs x n_steps)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--lora-r", type=int, default=128)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as directory:
        rows = run(args.arch, args.device, args.n_envs, args.n_steps, args.max_new_tokens, args.micro_batch_size,
                   args.lora_r, Path(directory) / "model")
    print(f"\n{'rollout_logprobs':<17}{'env-steps/s':>12}{'update s':>10}{'peak GiB':>10}{'max |ratio-1|':>15}")
    for row in rows:
        print(f"{row['rollout_logprobs']:<17}{row['rollout_env_steps_per_s']:>12.2f}{row['update_seconds']:>10.1f}"
              f"{row['update_peak_gib']:>10.1f}{row['first_minibatch_max_abs_ratio_minus_1']:>15.2e}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
