"""The main job: demonstrations -> SFT -> PPO -> evaluation on held-out seeds, with plots.

Every stage writes into ``out_dir`` and is skipped when its output is already there, so an
interrupted run loses nothing it had saved; ``resume=True`` continues PPO from its last checkpoint.

    out_dir/
      demos/demos.jsonl, demos/images/*.png    oracle demonstrations (chat-messages JSONL)
      sft/                                     SFT checkpoint (load_vlm / VLMPolicy(model=...))
      ppo/checkpoints/rl_model_<steps>_steps.zip, ppo/final.zip, ppo/adapter/ (save_pretrained)
      tb/                                      TensorBoard logs
      curve.jsonl, results.json                per-rollout success; the before/after table
      learning_curve.png, episode_strip.png    the pictures
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from gym_vlm_cards.evaluate import TABLE_HEADER, EvalResult, format_table
from vlm_policy.env_bridge import TokenActionWrapper
from vlm_policy.loading import TINY, load_processor, preferred_image_size


@dataclass
class TrainConfig:
    """Every knob of the main job, with its default.

    The defaults are the embedded tiny model's, found by measurement on NumberLine (2 CPU cores):
    PPO at lr 2e-5 barely moved the policy (approx KL ~0.005 per update, no gain), at 1e-4 the
    approx KL exploded to 1.6-3.3 and success fell; 5e-5 learns, but without a KL penalty one
    overshooting update could wreck the answers, and where PPO ended hung on floating-point detail
    (61.5% -> 68.0% on one machine, 59.0% -> 100.0% on another). A KL penalty of 0.1 towards the
    SFT checkpoint made it converge (61.0% -> 100.0%) and keeps the written reading of the frame
    faithful. 2 epochs of minibatches of 32 make as many optimizer steps per update as the paper's 4
    epochs of 64, at half the compute, so 4,096 env steps fit the 15-minute budget. Temperature 1.0
    made 11-14% of the answers unparseable, 0.5 none. The paper's values for a 7B model are in
    examples/paper_gpu_run.sh.
    """

    env_id: str = field(default="gym_cards/NumberLine-v0", metadata={"help": "task to learn"})
    model: str = field(default=TINY, metadata={"help": "'tiny' or a checkpoint path to start SFT from"})
    out_dir: str = field(default="runs/numberline", metadata={"help": "where every stage writes"})
    seed: int = field(default=0, metadata={"help": "seeds demos, model init, PPO envs and sampling"})
    prompt_style: str = field(default="cot", metadata={"help": "'cot' (thoughts then action) or 'action_only'"})
    # demonstrations and SFT
    demos: int = field(default=400, metadata={"help": "oracle steps recorded for SFT"})
    sft_steps: int = field(default=150, metadata={"help": "SFT optimizer steps"})
    sft_learning_rate: float = field(default=1e-3, metadata={"help": "SFT learning rate"})
    sft_batch_size: int = field(default=16, metadata={"help": "SFT batch size"})
    sft_lora_r: int = field(default=0, metadata={"help": "SFT LoRA rank (0: full fine-tuning, the tiny model)"})
    sft_train_vision: bool = field(default=False, metadata={
        "help": "let SFT update the vision tower (after the warm-up it is kept, so SFT cannot collapse it)"})
    vision_warmup_steps: int = field(default=150, metadata={"help": "vision warm-up steps before SFT (tiny model)"})
    warmup_labels: str = field(default="auto", metadata={
        "help": "warm-up targets: 'state', 'slots' (each card/number) or 'auto' (slots when states rarely repeat)"})
    # PPO (the paper's defaults where they carry over; the learning rate is the tiny model's own)
    ppo_timesteps: int = field(default=4096, metadata={"help": "env steps of PPO (paper: 15,000)"})
    n_envs: int = field(default=8, metadata={"help": "parallel envs (one batched generate per step)"})
    n_steps: int = field(default=32, metadata={"help": "rollout steps per env per update"})
    batch_size: int = field(default=32, metadata={"help": "PPO minibatch size"})
    n_epochs: int = field(default=2, metadata={"help": "PPO epochs per update (paper: 4)"})
    learning_rate: float = field(default=5e-5, metadata={"help": "PPO learning rate at the start (paper: 1e-5 for 7B)"})
    learning_rate_end: float = field(default=5e-6, metadata={"help": "cosine schedule's final learning rate"})
    clip_range: float = field(default=0.2, metadata={"help": "PPO clip (paper: 0.1)"})
    target_kl: float = field(default=0.05, metadata={"help": "stop an update's epochs early past this approx KL (0: never)"})
    gamma: float = field(default=0.9, metadata={"help": "discount (paper: 0.9)"})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda (paper: 0.95)"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "gradient clip (paper: 0.01 for 7B)"})
    ent_coef: float = field(default=0.0, metadata={"help": "entropy bonus"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss weight"})
    temperature: float = field(default=0.5, metadata={"help": "sampling temperature during PPO (paper: 0.2)"})
    cot_weight: float = field(default=0.5, metadata={"help": "lambda: weight of thought tokens' log-prob"})
    max_new_tokens: int = field(default=0, metadata={
        "help": "longest answer in tokens; 0: enough for the longest demonstration, at least 40 (paper: 256)"})
    lora_r: int = field(default=0, metadata={"help": "PPO LoRA rank (0: all weights, the tiny model)"})
    train_vision: bool = field(default=True, metadata={"help": "let PPO update the vision tower too"})
    value_lr_scale: float = field(default=10.0, metadata={"help": "value head lr multiplier"})
    kl_coef: float = field(default=0.1, metadata={
        "help": "weight of the KL penalty towards the SFT checkpoint (0: none, as in the paper)"})
    value_gradients_to_model: bool = field(default=False, metadata={
        "help": "let the value loss train the VLM (the paper's shared trunk); off for the tiny model, whose "
                "policy the random value head's early errors otherwise wreck"})
    keep_checkpoints: int = field(default=3, metadata={
        "help": "PPO checkpoints kept for --resume, the newest (0: all; each is ~40 MB for the tiny model)"})
    # evaluation
    eval_episodes: int = field(default=200, metadata={"help": "held-out episodes for the before/after table"})
    eval_seed: int = field(default=100_000, metadata={"help": "first held-out seed (far from training seeds)"})
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu' or 'cuda'"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})


def cosine_schedule(start: float, end: float):
    """SB3 learning-rate schedule: cosine from ``start`` to ``end`` over training."""

    def schedule(progress_remaining: float) -> float:
        done = 1.0 - progress_remaining
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * done))

    return schedule


class Pipeline:
    """Runs the stages of :class:`TrainConfig` in order; each one is resumable."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.out = Path(config.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
        (self.out / "config.json").write_text(json.dumps(asdict(config), indent=2))

    @cached_property
    def max_new_tokens(self) -> int:
        """The answer budget: the configured one, or (0) one that fits every demonstration answer.

        A configured budget shorter than a demonstration answer is an error: SFT would teach answers
        that generation can never finish.
        """
        from vlm_policy.training.demos import answer_token_budget, longest_answer_tokens, read_answers

        longest = longest_answer_tokens(read_answers(self.demonstrations()), load_processor(self.config.model).tokenizer)
        if self.config.max_new_tokens == 0:
            return answer_token_budget(longest)
        if self.config.max_new_tokens < longest:
            raise ValueError(f"--max-new-tokens {self.config.max_new_tokens} is shorter than the longest demonstration "
                             f"answer ({longest} tokens): use at least {longest}, or 0 to size it from the demonstrations")
        return self.config.max_new_tokens

    # ------------------------------------------------------------------ stages
    def env_kwargs(self, model: str) -> dict[str, Any]:
        size = preferred_image_size(load_processor(model))
        return {"image_size": size} if size and self.config.env_id.startswith("gym_cards/") else {}

    def demonstrations(self) -> Path:
        from vlm_policy.training.demos import DEMOS_FILE, write_demonstrations

        path = self.out / "demos" / DEMOS_FILE
        if path.is_file() and sum(1 for _ in path.open()) == self.config.demos:
            return path
        return write_demonstrations(self.config.env_id, self.config.demos, self.out / "demos", seed=self.config.seed,
                                    chain_of_thought=self.config.prompt_style == "cot",
                                    env_kwargs=self.env_kwargs(self.config.model))

    def sft(self) -> str:
        from vlm_policy.training.demos import read_demonstrations
        from vlm_policy.training.sft import SFTConfig, run_sft

        directory = self.out / "sft"
        if (directory / "training.json").is_file():
            return str(directory)
        config = SFTConfig(model=self.config.model, steps=self.config.sft_steps, batch_size=self.config.sft_batch_size,
                           learning_rate=self.config.sft_learning_rate, lora_r=self.config.sft_lora_r,
                           vision_warmup_steps=self.config.vision_warmup_steps if self.config.model == TINY else 0,
                           train_vision=self.config.sft_train_vision, warmup_labels=self.config.warmup_labels,
                           seed=self.config.seed, progress=self.config.progress)
        examples = read_demonstrations(self.demonstrations())
        return str(run_sft(config, examples, directory, device=self.device))

    def make_eval_env(self, model: str):
        processor = load_processor(model)
        kwargs = self.env_kwargs(model)

        def make() -> TokenActionWrapper:
            return TokenActionWrapper(gym.make(self.config.env_id, **kwargs), processor.tokenizer,
                                      self.max_new_tokens, self.config.prompt_style)

        return make

    def evaluate(self, policy, model: str, name: str, record: bool = False):
        from vlm_policy.training.evaluation import evaluate_vlm

        return evaluate_vlm(policy, self.make_eval_env(model), self.config.eval_episodes, self.config.eval_seed,
                            name=name, record_first=record, progress=self.config.progress)

    def ppo(self, sft_dir: str, resume: bool):
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import CallbackList

        from vlm_policy.training.callbacks import RotatingCheckpointCallback, VLMRolloutLogger
        from vlm_policy.env_bridge import make_vlm_vec_env
        from vlm_policy.policy import VLMPolicy

        c = self.config
        final = self.out / "ppo" / "final.zip"
        env = make_vlm_vec_env(c.env_id, n_envs=c.n_envs, model=sft_dir, seed=c.seed + 1, max_new_tokens=self.max_new_tokens,
                               prompt_style=c.prompt_style, env_kwargs=self.env_kwargs(sft_dir))
        if final.is_file():
            return PPO.load(final, env=env, device=self.device)
        checkpoint = latest_checkpoint(self.out / "ppo" / "checkpoints") if resume else None
        if checkpoint is not None:
            print(f"resuming PPO from {checkpoint}")
            model = PPO.load(checkpoint, env=env, device=self.device)
        else:
            if not resume:
                (self.out / "curve.jsonl").unlink(missing_ok=True)
            policy_kwargs = {"model": sft_dir, "temperature": c.temperature, "cot_weight": c.cot_weight,
                             "lora_r": c.lora_r, "train_vision": c.train_vision, "value_lr_scale": c.value_lr_scale,
                             "value_gradients_to_model": c.value_gradients_to_model, "kl_coef": c.kl_coef,
                             "seed": c.seed}
            model = PPO(VLMPolicy, env, learning_rate=cosine_schedule(c.learning_rate, c.learning_rate_end),
                        n_steps=c.n_steps, batch_size=c.batch_size, n_epochs=c.n_epochs, gamma=c.gamma,
                        gae_lambda=c.gae_lambda, clip_range=c.clip_range, ent_coef=c.ent_coef, vf_coef=c.vf_coef,
                        target_kl=c.target_kl or None,
                        max_grad_norm=c.max_grad_norm, policy_kwargs=policy_kwargs, tensorboard_log=str(self.out / "tb"),
                        seed=c.seed, device=self.device, verbose=0)
        remaining = c.ppo_timesteps - model.num_timesteps
        callbacks = CallbackList([
            RotatingCheckpointCallback(save_freq=c.n_steps, save_path=str(self.out / "ppo" / "checkpoints"),
                                       keep=c.keep_checkpoints),
            VLMRolloutLogger(self.out / "curve.jsonl"),
        ])
        if remaining > 0:
            model.learn(remaining, callback=callbacks, reset_num_timesteps=checkpoint is None,
                        tb_log_name="ppo", progress_bar=c.progress)
        model.save(final)
        model.policy.save_pretrained(self.out / "ppo" / "adapter")
        return model

    # ------------------------------------------------------------------ whole run
    def run(self, resume: bool = False) -> list[EvalResult]:
        start = time.perf_counter()
        self.demonstrations()
        sft_dir = self.sft()
        results = self._cached_results()
        if "after SFT" not in results:
            from vlm_policy.training.evaluation import standalone_policy

            policy = standalone_policy(sft_dir, self.make_eval_env(sft_dir)(), temperature=self.config.temperature,
                                       cot_weight=self.config.cot_weight, lora_r=self.config.lora_r)
            results["after SFT"] = self.evaluate(policy, sft_dir, "after SFT")[0]
            self._save_results(results)
        model = self.ppo(sft_dir, resume)
        result, record = self.evaluate(model.policy, sft_dir, "after PPO", record=True)
        results["after PPO"] = result
        self._save_results(results)
        rows = [results["after SFT"], results["after PPO"]]
        print(f"\n{self.config.env_id}: {self.config.eval_episodes} held-out episodes (seeds from "
              f"{self.config.eval_seed}), greedy answers, {time.perf_counter() - start:.0f} s in all")
        print(format_table(TABLE_HEADER, [r.row() for r in rows]))
        from vlm_policy.training.plots import plot_episode_strip, plot_learning_curve

        plot_learning_curve(self.out / "curve.jsonl", self.out / "learning_curve.png",
                            sft_success=results["after SFT"].success_rate, title=self.config.env_id,
                            ppo_success=results["after PPO"].success_rate)
        if record is not None:
            plot_episode_strip(record, self.out / "episode_strip.png", title=f"{self.config.env_id} after PPO")
        print(f"wrote {self.out / 'learning_curve.png'} and {self.out / 'episode_strip.png'}")
        return rows

    def _cached_results(self) -> dict[str, EvalResult]:
        path = self.out / "results.json"
        if not path.is_file():
            return {}
        return {name: EvalResult(**row) for name, row in json.loads(path.read_text()).items()}

    def _save_results(self, results: dict[str, EvalResult]) -> None:
        (self.out / "results.json").write_text(json.dumps({k: asdict(v) for k, v in results.items()}, indent=2))


def latest_checkpoint(directory: Path) -> Path | None:
    """The SB3 checkpoint with the most timesteps in ``directory``, or None."""
    from vlm_policy.training.callbacks import saved_checkpoints

    found = saved_checkpoints(directory)
    return found[-1] if found else None
