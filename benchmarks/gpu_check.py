"""Rollout speed and one PPO update of a real architecture, eager against merged and compiled decoding.

Builds a randomly initialised model of a real architecture (on a GPU by default LLaVA-1.6-Mistral-7B's,
CLIP ViT-L/14-336 with anyres tiles and Mistral-7B, and Qwen2.5-VL-7B's), saves it as a checkpoint and
trains it through the path users take: ``PPO(VLMPolicy, make_vlm_vec_env(...))`` with LoRA (r=128,
alpha 256, vision tower included, on a GPU), bf16 compute with fp32 trainable weights, gradient
checkpointing and micro-batches. For each way of decoding, side by side in one process on one model:

* ``eager``: the adapter's LoRA layers run as they train (``merge_for_rollouts=False``);
* ``merged``: the adapter merged into a copy of the base weights while generating (the default);
* ``merged+compiled``: merged, on a static KV cache with a ``torch.compile``-d decoding step
  (``rollout_compile=True``);

it prints the decode tokens/s of one batched ``generate`` (warm: compilation is paid before timing),
the rollout env-steps/s and the update's seconds and peak GPU memory of one ``learn`` over one rollout,
and the first minibatch's max |ratio - 1| before any update (0 means PPO starts exactly on-policy).
With ``--rounds N`` the decodings take turns N times and the medians are printed (the largest ratio).

    python benchmarks/gpu_check.py                   # a GPU: llava-next-mistral-7b and qwen2.5-vl-7b
    python benchmarks/gpu_check.py --device cpu      # the CPU: the tiny model and two small LLaVAs, LoRA r=16
    python benchmarks/gpu_check.py --arch llava-small --device cpu --max-new-tokens 8   # seconds

A random model's answers never end early, so every answer runs to the full token budget: the memory
and time figures are the worst case for that budget.
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
from vlm_policy.logprobs import valid_mask
from vlm_policy.models import random_models
from vlm_policy.models.tiny import TinyConfig

#: name -> (saver(directory, device), LoRA rank it is measured with by default)
ARCHITECTURES = {
    "llava-next-mistral-7b": (lambda d, device: random_models.save_random_llava_next(
        d, sizes=random_models.LLAVA_NEXT_MISTRAL_7B, device=device, dtype=torch.bfloat16), 128),
    "qwen2.5-vl-3b": (lambda d, device: random_models.save_random_qwen2_vl(
        d, sizes=random_models.QWEN2_5_VL_3B, version="2.5", image_size=336, device=device, dtype=torch.bfloat16), 128),
    "qwen2.5-vl-7b": (lambda d, device: random_models.save_random_qwen2_vl(
        d, sizes=random_models.QWEN2_5_VL_7B, version="2.5", image_size=336, device=device, dtype=torch.bfloat16), 128),
    # LLaVA-NeXT's structure (anyres tiles, Mistral) at a size that runs on a CPU in seconds.
    "llava-next-small": (lambda d, device: random_models.save_random_llava_next(d, device=device), 16),
    # The embedded tiny model's LLaVA (CLIP 2 x 128, Llama 4 x 256) saved as a checkpoint, trained with LoRA.
    "llava-small": (lambda d, device: random_models.save_random_llava(d), 16),
    # The same with a deeper, narrower language model (12 x 128): decoding's cost is per layer, as in real models.
    "llava-small-deep": (lambda d, device: random_models.save_random_llava(
        d, config=TinyConfig(text_hidden=128, text_layers=12)), 16),
    # The embedded default itself: fully fine-tuned (no adapter, so "merged" decodes as "eager" does).
    "tiny": (None, 0),
}
GPU_DEFAULT = ["llava-next-mistral-7b", "qwen2.5-vl-7b"]
CPU_DEFAULT = ["tiny", "llava-small", "llava-small-deep"]
#: (name, merge_for_rollouts, rollout_compile)
DECODING = [("eager", False, False), ("merged", True, False), ("merged+compiled", True, True)]


class _Measure(BaseCallback):
    """Times the rollout, then (before PPO trains on it) scores one minibatch with the update's forward
    and records the largest |ratio - 1|; resets the GPU's peak-memory counter for the update."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.figures: dict[str, float] = {}

    def _on_rollout_start(self) -> None:
        _synchronize()
        self._start = time.perf_counter()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        _synchronize()
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


def _decode_tokens_per_s(policy: VLMPolicy, env, repeats: int) -> float:
    """Generated tokens per second of one batched ``generate`` over the envs' observations. A warm-up first
    makes both calls the rollout will make (``generate`` alone, and the rollout's own sampling), so any
    compilation is paid before anything is timed."""
    obs = {key: torch.as_tensor(value, device=policy.device) for key, value in env.reset().items()}
    images, prompts = policy._unpack(obs)
    distribution = policy.answer_distribution
    distribution.generate(images, prompts, policy.device)
    policy(obs)
    _synchronize()
    start, tokens = time.perf_counter(), 0
    for _ in range(repeats):
        answers = distribution.generate(images, prompts, policy.device)
        tokens += int(valid_mask(answers, distribution.end_ids).sum())
    _synchronize()
    return tokens / (time.perf_counter() - start)


def _policy_settings(arch: str, directory: Path, device: str, dtype: str, lora_r: int, micro_batch_size: int) -> dict:
    if arch == "tiny":
        return {"model": "tiny", "device": device, "dtype": dtype, "kl_coef": 0.0, "compute_entropy": False}
    return {"model": str(directory), "lora_r": lora_r, "lora_alpha": 2 * lora_r, "train_vision": True, "dtype": dtype,
            "gradient_checkpointing": True, "micro_batch_size": micro_batch_size, "temperature": 0.2,
            "cot_weight": 0.5, "kl_coef": 0.0, "compute_entropy": False, "device": device}


def run(arch: str, device: str, n_envs: int, n_steps: int, max_new_tokens: int, micro_batch_size: int,
        lora_r: int | None, dtype: str, repeats: int, directory: Path,
        decodings: tuple[str, ...] = tuple(row[0] for row in DECODING), rounds: int = 1) -> list[dict]:
    saver, default_rank = ARCHITECTURES[arch]
    lora_r = default_rank if lora_r is None else lora_r
    if saver is not None:
        start = time.perf_counter()
        saver(directory, device if device != "cpu" else None)
        print(f"built and saved a random {arch} in {time.perf_counter() - start:.0f} s", flush=True)
    kwargs = _policy_settings(arch, directory, device, dtype, lora_r, micro_batch_size)
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=n_envs, model=kwargs["model"], seed=0,
                           max_new_tokens=max_new_tokens)
    batch = n_envs * n_steps
    start = time.perf_counter()
    model = PPO(VLMPolicy, env, n_steps=n_steps, batch_size=batch, n_epochs=1, learning_rate=1e-5, clip_range=0.1,
                max_grad_norm=0.01, gamma=0.9, gae_lambda=0.95, policy_kwargs=kwargs, device=device, seed=0)
    policy = model.policy
    print(f"loaded the policy in {time.perf_counter() - start:.0f} s; trainable parameters "
          f"{sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6:.1f}M", flush=True)
    measured: dict[str, list[dict]] = {name: [] for name, _, _ in DECODING if name in decodings}
    # Round after round, the decodings take turns, so that a noisy machine weighs on each alike.
    for _ in range(rounds):
        for name, merge, compiled in [row for row in DECODING if row[0] in decodings]:
            distribution = policy.answer_distribution
            distribution.merge_adapter, distribution.compile_decoding = merge, compiled
            decode = _decode_tokens_per_s(policy, env, repeats)
            measure = _Measure(batch)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            model.learn(batch, callback=measure, reset_num_timesteps=False)
            _synchronize()
            measured[name].append({
                "decode_tokens_per_s": decode,
                "rollout_env_steps_per_s": batch / measure.figures["rollout_seconds"],
                "update_seconds": time.perf_counter() - measure.figures["update_start"],
                "update_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
                "first_minibatch_max_abs_ratio_minus_1": measure.figures["first_minibatch_max_abs_ratio_minus_1"],
            })
    rows = []
    for name, runs in measured.items():
        figures = {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
        figures["first_minibatch_max_abs_ratio_minus_1"] = max(run["first_minibatch_max_abs_ratio_minus_1"] for run in runs)
        row = {
            "arch": arch, "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            "decoding": name, "dtype": str(policy.compute_dtype).removeprefix("torch."),
            "rollout_logprobs": "recompute" if policy.recomputes_rollout_logprobs else "generate",
            "n_envs": n_envs, "answers_per_update": batch, "max_new_tokens": max_new_tokens,
            "micro_batch_size": micro_batch_size, "lora_r": policy.lora_r, "threads": torch.get_num_threads(),
            "rounds": rounds, **figures,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    env.close()
    return rows


def print_table(rows: list[dict]) -> None:
    eager = {row["arch"]: row for row in rows if row["decoding"] == "eager"}
    print(f"\n{'arch':<22}{'decoding':<17}{'decode tok/s':>13}{'env-steps/s':>12}{'x eager':>8}{'update s':>10}"
          f"{'peak GiB':>10}{'max |ratio-1|':>15}")
    for row in rows:
        speedup = row["rollout_env_steps_per_s"] / eager[row["arch"]]["rollout_env_steps_per_s"]
        print(f"{row['arch']:<22}{row['decoding']:<17}{row['decode_tokens_per_s']:>13.1f}"
              f"{row['rollout_env_steps_per_s']:>12.2f}{speedup:>8.2f}{row['update_seconds']:>10.1f}"
              f"{row['update_peak_gib']:>10.1f}{row['first_minibatch_max_abs_ratio_minus_1']:>15.2e}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", choices=sorted(ARCHITECTURES),
                        help=f"default: {' '.join(GPU_DEFAULT)} on a GPU, {' '.join(CPU_DEFAULT)} on the CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", help="compute dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=2, help="rollout steps per env (answers = n_envs x n_steps)")
    parser.add_argument("--max-new-tokens", type=int, help="answer budget (default: 256 on a GPU, 64 on the CPU)")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--lora-r", type=int, help="LoRA rank (default: 128 for the 7B and 3B models, 16 for the small)")
    parser.add_argument("--decoding", nargs="+", choices=[row[0] for row in DECODING], default=[row[0] for row in DECODING])
    parser.add_argument("--repeats", type=int, default=3, help="timed generate calls per decoding and round")
    parser.add_argument("--rounds", type=int,
                        help="rounds of every decoding, medians reported (default: 1 on a GPU, 3 on the CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for arch in args.arch or (GPU_DEFAULT if on_gpu else CPU_DEFAULT):
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as directory:
            rows += run(arch, args.device, args.n_envs, args.n_steps, args.max_new_tokens or (256 if on_gpu else 64),
                        args.micro_batch_size, args.lora_r, args.dtype or ("bfloat16" if on_gpu else "float32"),
                        args.repeats, Path(directory) / "model", tuple(args.decoding),
                        args.rounds or (1 if on_gpu else 3))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
