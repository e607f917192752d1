"""The main job: demonstrations -> SFT -> PPO -> evaluation on held-out seeds, with plots.

Every stage writes into ``out_dir`` and is skipped when its output is already there, so an
interrupted run loses nothing it had saved; ``resume=True`` continues PPO from its last checkpoint.

    out_dir/
      demos/demos.jsonl, demos/images/*.png    oracle demonstrations (chat-messages JSONL)
      sft/                                     SFT checkpoint (load_vlm / VLMPolicy(model=...))
      ppo/checkpoints/rl_model_<steps>_steps.zip, ppo/final.zip, ppo/adapter/ (save_pretrained)
      ppo/validation.jsonl, ppo/best/          PPO's greedy validation checks; the best check's agent
      tb/                                      TensorBoard logs
      curve.jsonl, results.json                per-rollout success; the before/after table
      learning_curve.png, episode_strip.png    the pictures
      episodes/*.jsonl, alfworld_table.md      ALFWorld: each evaluated game's outcome; the per-task-type table

On ALFWorld (``--env alfworld/ALFWorld-v0``) demonstrations and PPO play the ``--split`` games, PPO's
envs run in subprocesses (a reset costs about a second), and each evaluation plays the first
``--eval-episodes`` games of every ``--eval-splits`` split once (task types in turn); the final
table has a row per agent (random admissible command, oracle, after SFT, after PPO) and a column
per task type.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from gym_vlm_cards.evaluate import TABLE_HEADER, EvalResult, format_table
from gym_vlm_cards.registration import registered_id
from vlm_policy import distributed
from vlm_policy.agents import checkpoint_problem
from vlm_policy.checkpoints import SFT_METADATA_FILE, atomic_path, atomic_write_text
from vlm_policy.env_bridge import frame_kwargs
from vlm_policy.loading import check_model_source, is_tiny, load_processor, resolve_device
from vlm_policy.optim import cosine_schedule
from vlm_policy.training.configs import (
    REACH_PROBABILITY,
    VALIDATION_SEED,
    CommonConfig,
    ModelConfig,
    SFTConfig,
    TrainConfig,
    is_alfworld,
)
from vlm_policy.training.run_folder import FolderLock, RunRefused, remove_stale_partials
from vlm_policy.training.run_record import TRAIN_LOG, LogTee, append_log_lines, run_record, write_run_record
from vlm_policy.training.stages import StageRecords

__all__ = ["Pipeline", "TrainConfig", "cosine_schedule", "latest_checkpoint"]
T = TypeVar("T")


def play_validation(policy, make_env: Callable[[], Any], episodes: int, at_once: int) -> float:
    """The share of ``episodes`` validation episodes (seeds from :data:`VALIDATION_SEED`) that ``policy``'s
    greedy answers win, ``at_once`` (``--eval-batch``) stepping together in one batched generate (64
    NumberLine episodes at once: 6 s instead of 10 s at 8 here). An episode whose state comes back is
    lost there and then (``end_loops``): played out, it would loop to its step limit."""
    from vlm_policy.training.evaluation import evaluate_vlm

    result, _ = evaluate_vlm(policy, make_env, episodes, VALIDATION_SEED, parallel=at_once, name="validation",
                             end_loops=True)
    return result.success_rate


def _group(cls, config: TrainConfig):
    """The settings of one config group (e.g. :class:`SFTConfig`) taken from the whole ``config``."""
    return cls(**{item.name: getattr(config, item.name) for item in fields(cls)})


class Pipeline:
    """Runs the stages of :class:`TrainConfig` in order; each one is resumable. Nothing is written
    before :meth:`run` (or a stage's own method) is called.

    Under torchrun (:mod:`vlm_policy.distributed`) every process runs the pipeline: SFT and PPO train
    data-parallel on all of them; the demonstrations, stage records, evaluations, results and plots
    are made by rank 0 alone (the others wait and receive what it made). ``out_dir`` must be one
    folder every process sees (a shared filesystem across nodes).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.out = Path(config.out_dir)
        self.context = distributed.current()
        self.device = distributed.device_for(self.context, str(resolve_device(config.device)))
        #: Whether the latest :meth:`ppo` loaded a finished run's whole final agent instead of training one.
        self.agent_reused = False
        if self.context.enabled:
            check_divides_across_processes(config, self.context.world_size)
        if not config.progress:  # --no-progress silences the libraries' bars too (loading and writing weights)
            from huggingface_hub.utils import disable_progress_bars
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
            disable_progress_bars()

    def say(self, text: str) -> None:
        """Prints a line of the run's log (rank 0 only); once the run's checks have passed, everything printed
        also goes to ``train.log`` in the run folder (:class:`~vlm_policy.training.run_record.LogTee`)."""
        if not self.context.is_main:
            return
        print(text, flush=True)
        if not isinstance(sys.stdout, LogTee) and self.out.is_dir():  # a line before the log starts
            append_log_lines(self.out / TRAIN_LOG, text.split("\n"))

    def stage(self, name: str, what: str) -> None:
        """The header line of a stage: its name and what it will do."""
        self.say(f"== {name}: {what}")

    def on_main(self, work: Callable[[], T]) -> T:
        """``work()`` run by rank 0 alone; every process returns its result or raises its error."""
        if not self.context.enabled:
            return work()
        outcome: tuple[str, Any] = ("ok", None)
        if self.context.is_main:
            try:
                outcome = ("ok", work())
            except Exception as error:  # handed to every process, which all raise it
                outcome = ("error", error)
        outcome = distributed.broadcast_object(outcome)
        if outcome[0] == "error":
            raise outcome[1]
        return outcome[1]

    def answer_budget(self, demos: Path) -> int:
        """The answer budget: the configured one, or (0) one that fits every demonstration answer.

        A configured budget shorter than a demonstration answer is an error: SFT would teach answers
        that generation can never finish.
        """
        from vlm_policy.training.demos import answer_token_budget, longest_answer_tokens, read_answers

        longest = longest_answer_tokens(read_answers(demos), load_processor(self.config.model).tokenizer)
        if self.config.max_new_tokens == 0:
            return answer_token_budget(longest)
        if self.config.max_new_tokens < longest:
            raise ValueError(f"--max-new-tokens {self.config.max_new_tokens} is shorter than the longest demonstration "
                             f"answer ({longest} tokens): use at least {longest}, or 0 to size it from the demonstrations")
        return self.config.max_new_tokens

    # ------------------------------------------------------------------ stages
    def demonstrations(self) -> Path:
        from vlm_policy.training.demos import DEMOS_FILE, set_size, write_demonstrations

        if set_size(self.out / "demos") == self.config.demos:
            return self.out / "demos" / DEMOS_FILE
        env_kwargs = frame_kwargs(self.config.env_id, load_processor(self.config.model), self.config.env_kwargs())
        return write_demonstrations(self.config.env_id, self.config.demos, self.out / "demos", seed=self.config.seed,
                                    chain_of_thought=self.config.prompt_style == "cot", env_kwargs=env_kwargs)

    def sft(self, demos: Path, budget: int = 0) -> str:
        from vlm_policy.training.demos import read_demonstrations
        from vlm_policy.training.sft import run_sft

        # Absolute: the path is recorded in the PPO agent, which must load from any working directory.
        directory = (self.out / "sft").resolve()
        if (directory / SFT_METADATA_FILE).is_file():
            return str(directory)
        c = self.config
        validate = self.validation(budget or self.answer_budget(demos)) if c.stop_targets() else None
        sft = _group(SFTConfig, c).with_stops_resolved(c.stop_reach())
        return str(run_sft(read_demonstrations(demos), directory, sft=sft, model=_group(ModelConfig, c),
                           common=_group(CommonConfig, c), validation=validate, tensorboard_dir=self.out / "tb"))

    def validation(self, budget: int) -> Callable[[Any, list[str]], dict[str, float]]:
        """SFT's stop check: ``check(bundle, names)`` measures the model being trained on the
        ``--sft-check-episodes`` validation episodes (seeds from :data:`VALIDATION_SEED`, never the test seeds).

        * ``"success"``: the share of the episodes that greedy answers win. The model is copied and saved to
          a temporary folder so that it is played exactly as the "after SFT" evaluation plays a checkpoint (a
          copy: saving merges LoRA weights, which must stay apart in training).
        * ``"reach"``: the share of the frames of the oracle's play of those episodes on which sampling at
          PPO's ``--temperature`` writes the oracle's whole answer with a probability of at least
          :data:`REACH_PROBABILITY`. Scored on the model in memory (no copy): teacher-forced forwards only.
        """
        c = self.config
        frames: list = []

        def reach(bundle) -> float:
            from vlm_policy.distribution import TokenSequenceDistribution
            from vlm_policy.loading import resolve_dtype
            from vlm_policy.training.demos import oracle_episode_examples

            if not frames:  # the same frames at every check: made once
                env_kwargs = frame_kwargs(c.env_id, bundle.processor, c.env_kwargs())
                frames.extend(oracle_episode_examples(c.env_id, c.sft_check_episodes, VALIDATION_SEED,
                                                      c.prompt_style == "cot", env_kwargs))
            distribution = TokenSequenceDistribution.for_bundle(bundle, c.temperature, budget, c.micro_batch,
                                                                resolve_dtype(c.dtype, self.device))
            log_probs = distribution.answer_log_probs([f.image for f in frames], [f.prompt for f in frames],
                                                      [f.answer for f in frames], self.device)
            return float((log_probs >= math.log(REACH_PROBABILITY)).mean())

        measures = {"success": self.validation_success(budget), "reach": reach}
        return lambda bundle, names: {name: measures[name](bundle) for name in names}

    def validation_success(self, budget: int) -> Callable[[Any], float]:
        """The share of the validation episodes that greedy answers of a model being trained win (see
        :meth:`validation`)."""
        import copy
        import dataclasses
        import tempfile

        from vlm_policy.checkpoints import save_sft_checkpoint
        from vlm_policy.training.evaluation import eval_env_factory, standalone_policy

        c = self.config

        def check(bundle) -> float:
            with tempfile.TemporaryDirectory(prefix="sft-check-") as folder:
                snapshot = save_sft_checkpoint(dataclasses.replace(bundle, model=copy.deepcopy(bundle.model)),
                                               Path(folder) / "sft", {})
                make_env = eval_env_factory(c.env_id, str(snapshot), budget, c.prompt_style, c.env_kwargs())
                policy = standalone_policy(str(snapshot), make_env(), device=self.device,
                                           **self.evaluation_kwargs(str(snapshot)))
                return play_validation(policy, make_env, c.sft_check_episodes, c.episodes_at_once())

        return check

    def ppo_validation(self, sft_dir: str, budget: int) -> Callable[[Any], float]:
        """PPO's check: the share of ``--ppo-check-episodes`` validation episodes (seeds from
        :data:`VALIDATION_SEED`) that a policy's greedy answers win, played as "after PPO" plays its agent."""
        from vlm_policy.training.evaluation import eval_env_factory

        c = self.config
        make_env = eval_env_factory(c.env_id, sft_dir, budget, c.prompt_style, c.env_kwargs())
        return lambda policy: play_validation(policy, make_env, c.ppo_check_episodes, c.episodes_at_once())

    def evaluate(self, policy, model: str, budget: int, name: str, record: bool = False):
        """The held-out evaluation's result and, with ``record``, the episodes the strip shows: a won and a lost
        one where the first episodes have both (ALFWorld: the first game)."""
        from vlm_policy.training.evaluation import eval_env_factory, evaluate_vlm

        if is_alfworld(self.config.env_id):
            result, first = self._evaluate_games(policy, model, budget, name, record)
            return result, [first] if first is not None else None
        make_env = eval_env_factory(self.config.env_id, model, budget, self.config.prompt_style,
                                    self.config.step_limit())
        examples = {} if record else None
        result, _ = evaluate_vlm(policy, make_env, self.config.eval_episodes, self.config.eval_seed,
                                 parallel=self.config.episodes_at_once(), name=name, progress=self.config.progress,
                                 examples=examples)
        return result, [examples[won] for won in (True, False) if won in examples] if record else None

    @cached_property
    def evaluation_games(self) -> dict[str, list[str]]:
        """ALFWorld: the games each evaluation split plays (the first --eval-episodes, task types in turn);
        found once per pipeline (it reads every game's ``traj_data.json``)."""
        from alfworld_bridge.evaluation import evaluation_games

        return {split: [str(g) for g in evaluation_games(self.config.data_root or None, split, self.config.eval_episodes)]
                for split in self.config.eval_splits}

    def _evaluate_games(self, policy, model: str, budget: int, name: str, record: bool):
        """ALFWorld: every evaluation game once per split; the outcomes go to ``episodes/<name>.jsonl``."""
        from vlm_policy.training.evaluation import eval_env_factory, evaluate_vlm_on_games

        results, first_record, outcomes = [], None, {}
        for split, games in self.evaluation_games.items():
            make_env = eval_env_factory(self.config.env_id, model, budget, self.config.prompt_style,
                                        env_kwargs={"game_files": games, **self.config.step_limit()})
            result, episode_record, outcomes[split] = evaluate_vlm_on_games(
                policy, make_env, len(games), self.config.eval_seed, name=f"{name} {split}",
                parallel=self.config.episodes_at_once(),
                record_first=record and first_record is None, progress=self.config.progress)
            results.append(result)
            first_record = first_record or episode_record
        self._write_outcomes(name, outcomes)
        return _pooled(name, results), first_record

    def _episodes_file(self, name: str) -> Path:
        return self.out / "episodes" / f"{name.replace(' ', '_')}.jsonl"

    def _write_outcomes(self, name: str, by_split: dict[str, list]) -> None:
        """``episodes/<name>.jsonl``: each game's outcome, with its split."""
        path = self._episodes_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"split": split, **o.to_dict()}) for split, outcomes in by_split.items() for o in outcomes]
        atomic_write_text(path, "\n".join(lines) + "\n")

    def policy_kwargs(self, model: str) -> dict[str, Any]:
        """VLMPolicy's settings for PPO from ``model`` (also those of the "after SFT" evaluation)."""
        c = self.config
        return {"model": model, "temperature": c.temperature, "cot_weight": c.cot_weight, "lora_r": c.lora_r,
                "train_vision": c.train_vision, "value_lr_scale": c.value_lr_scale,
                "value_gradients_to_model": c.value_gradients_to_model, "kl_coef": c.kl_coef,
                "gradient_checkpointing": c.checkpointing_for(c.model), "micro_batch_size": c.micro_batch,
                "compute_entropy": c.ent_coef > 0, "dtype": c.dtype,
                "device": self.device, "seed": c.seed, "env_id": registered_id(c.env_id)}

    def ppo_arguments(self) -> dict[str, Any]:
        """SB3 ``PPO``'s own arguments as the main job sets them (``PPO(VLMPolicy, env, **this, policy_kwargs=...)``)."""
        c = self.config
        return {"learning_rate": cosine_schedule(c.learning_rate, c.learning_rate_end), "n_steps": c.n_steps,
                "batch_size": c.batch_size, "n_epochs": c.n_epochs, "gamma": c.gamma, "gae_lambda": c.gae_lambda,
                "clip_range": c.clip_range, "ent_coef": c.ent_coef, "vf_coef": c.vf_coef,
                # Data-parallel: the early stop is taken on the KL of all processes (distributed.py).
                "target_kl": (c.target_kl or None) if not self.context.enabled else None,
                "max_grad_norm": c.max_grad_norm, "seed": c.seed + self.context.rank, "device": self.device}

    def evaluation_kwargs(self, model: str) -> dict[str, Any]:
        """The settings of :meth:`policy_kwargs` that a policy outside PPO (an evaluation) takes."""
        return {k: v for k, v in self.policy_kwargs(model).items()
                if k in ("temperature", "cot_weight", "lora_r", "micro_batch_size", "dtype", "seed")}

    def ppo(self, sft_dir: str, budget: int, resume: bool):
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import CallbackList

        from vlm_policy.agents import embed_base, load_agent
        from vlm_policy.checkpoints import saves_whole_model
        from vlm_policy.env_bridge import make_vlm_vec_env
        from vlm_policy.policy import VLMPolicy
        from vlm_policy.training.callbacks import (
            BEST_AGENT_DIR,
            VALIDATION_RECORD,
            GreedyValidationCallback,
            HyperparameterLogger,
            KeepBestAgent,
            StopOnValidationSuccess,
            UpdateCheckpointCallback,
            VLMRolloutLogger,
            checkpoint_steps,
            keep_points_up_to,
        )

        c = self.config
        context = self.context
        main = context.is_main
        final = self.out / "ppo" / "final.zip"
        # Each process plays its own envs: rank r's episodes are seeded apart from every other rank's.
        subprocesses = None
        if is_alfworld(c.env_id) and c.n_envs > 1:  # a reset loads a game (~1 s): the envs step side by side
            from stable_baselines3.common.vec_env import SubprocVecEnv

            subprocesses = SubprocVecEnv
        env = make_vlm_vec_env(c.env_id, n_envs=c.n_envs, model=sft_dir, seed=c.seed + 1 + 100_000 * context.rank,
                               max_new_tokens=budget, prompt_style=c.prompt_style, env_kwargs=c.env_kwargs(),
                               vec_env_cls=subprocesses)
        # Agents are read without unpickling (load_agent); training state comes from the config.
        schedule = cosine_schedule(c.learning_rate, c.learning_rate_end)
        training = {"learning_rate": schedule, "clip_range": c.clip_range}
        if context.enabled:  # the early stop is agreed across processes through this buffer (distributed.py)
            training["rollout_buffer_class"] = distributed.AgreedStopRolloutBuffer
        self.agent_reused = self.on_main(lambda: _final_is_whole(final))
        if self.agent_reused:
            return load_agent(final, env, device=self.device, **training)
        checkpoint = self.on_main(lambda: latest_checkpoint(self.out / "ppo" / "checkpoints")) if resume else None
        if checkpoint is not None:
            if main:
                self.say(f"resuming PPO from {checkpoint}")
                keep_points_up_to(self.out / "curve.jsonl", checkpoint_steps(checkpoint))  # the rest are made again
            model = load_agent(checkpoint, env, device=self.device, **training)
        else:
            if main:  # a fresh start (nothing saved, or --overwrite): nothing of an earlier attempt is kept
                for leftover in (self.out / "curve.jsonl", self.out / VALIDATION_RECORD):
                    leftover.unlink(missing_ok=True)
                for leftover in (self.out / "ppo" / "checkpoints", self.out / BEST_AGENT_DIR):
                    shutil.rmtree(leftover, ignore_errors=True)
            model = PPO(VLMPolicy, env, **self.ppo_arguments(), policy_kwargs=self.policy_kwargs(sft_dir),
                        rollout_buffer_class=training.get("rollout_buffer_class"),
                        tensorboard_log=str(self.out / "tb") if main else None, verbose=0)
        # --ppo-timesteps counts the env steps of every process; each makes its share.
        remaining = c.ppo_timesteps // context.world_size - model.num_timesteps
        callbacks = [VLMRolloutLogger(self.out / "curve.jsonl" if main else None, pool_processes=True),
                     HyperparameterLogger(self.config.to_dict())]
        if main:
            callbacks.insert(0, UpdateCheckpointCallback(self.out / "ppo" / "checkpoints", keep=c.keep_checkpoints,
                                                         steps_scale=context.world_size))
        checks_every = c.ppo_checks_every()
        if checks_every:
            after_check = ([KeepBestAgent(self.out / BEST_AGENT_DIR)] if main and c.ppo_keep_best else []) + (
                [StopOnValidationSuccess(c.ppo_stop_success)] if c.ppo_stop_success else [])
            callbacks.append(GreedyValidationCallback(
                self.ppo_validation(sft_dir, budget), self.out / VALIDATION_RECORD if main else None,
                every=checks_every, steps_scale=context.world_size,
                callback_after_check=CallbackList(after_check) if after_check else None))
        if remaining > 0:
            with distributed.data_parallel(model, c.target_kl):
                model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=checkpoint is None,
                            tb_log_name="ppo", progress_bar=c.progress and main)
        if checks_every and c.ppo_keep_best:
            self._hand_over_best(model)
        if context.enabled:
            distributed.check_same_weights(model.policy, "PPO weights")
        if main:
            with atomic_path(self.out / "ppo" / "adapter") as temporary:
                model.policy.save_pretrained(temporary)
            with atomic_path(final) as temporary:  # last: its presence marks the stage as done
                model.save(temporary)
                if saves_whole_model(model.policy):  # then the zip loads without the SFT directory too
                    embed_base(temporary, sft_dir)
        distributed.barrier()
        return model

    def _hand_over_best(self, model) -> None:
        """Loads the agent of the best PPO check (``ppo/best/``) into ``model``, every process the same file;
        when it is not the last update's, says so (the last update's agent stays in ``ppo/checkpoints/``)."""
        from vlm_policy.training.callbacks import BEST_AGENT_DIR, BEST_AGENT_FILE, VALIDATION_RECORD, kept_best, read_validation

        steps = model.num_timesteps * self.context.world_size
        best_dir = self.out / BEST_AGENT_DIR
        # Rank 0 wrote the folder before it reads it here, and the others hear of it only through this broadcast.
        kept = self.on_main(lambda: kept_best(best_dir))
        if kept is None:
            return
        # Loaded even when it was checked at this step count: after a resume it may be the interrupted
        # attempt's agent, and the agent handed over is always the one its check scored.
        model.set_parameters(str(best_dir / BEST_AGENT_FILE), exact_match=True, device=self.device)
        if not self.context.is_main:
            return
        checks = read_validation(self.out / VALIDATION_RECORD)
        # A run stopped by --ppo-stop-success ends one env step past its last check, the same agent's.
        last_check = checks[-1]["timesteps"] if checks else steps
        if kept["timesteps"] != last_check:
            after = f", the last update's {checks[-1]['success_rate']:.1%}" if checks else ""
            start = " (the starting SFT model)" if kept["timesteps"] == 0 else ""
            self.say(f"PPO's agent is the one checked at {kept['timesteps']} env steps{start}: greedy answers win "
                  f"{kept['success_rate']:.1%} of the validation episodes{after}")

    # ------------------------------------------------------------------ whole run
    def run(self, resume: bool = False, overwrite: bool = False) -> list[EvalResult]:
        """Runs every stage not already done with these settings.

        :param resume: continue PPO from its newest whole checkpoint (else an unfinished PPO stage
            starts again).
        :param overwrite: redo the stages made with other settings (and every later one) instead
            of stopping with the differences named.
        """
        lock = FolderLock(self.out)
        self.on_main(lock.acquire)  # one run at a time in out_dir: a second one is refused
        try:
            return self._run_stages(resume, overwrite)
        finally:
            if self.context.is_main:
                lock.release()

    def _run_stages(self, resume: bool, overwrite: bool) -> list[EvalResult]:
        start = time.perf_counter()
        records = StageRecords(self.out, self.config)
        results = self.on_main(lambda: self._prepare(records, resume, overwrite))
        # From here on the folder is this run's: what rank 0 prints goes to train.log too.
        with LogTee(self.out / TRAIN_LOG) if self.context.is_main else contextlib.nullcontext():
            return self._make_stages(records, results, resume, start)

    def _make_stages(self, records: StageRecords, results: dict[str, EvalResult], resume: bool,
                     start: float) -> list[EvalResult]:
        c = self.config
        self.stage("demos", f"the oracle plays {c.demos} steps of {c.env_id} (kept when {self.out / 'demos'} has them)")
        demos = self.on_main(lambda: (records.begin("demos"), self.demonstrations())[1])
        budget = self.answer_budget(demos)
        self.on_main(lambda: records.begin("sft"))
        stop = f", stopped once a check's reach is {c.stop_reach():.0%}" if c.stop_reach() else ""
        self.stage("sft", f"fine-tunes {c.model} on them for up to {c.sft_steps} steps{stop}")
        sft_dir = self.sft(demos, budget)
        if "after SFT" not in results:
            self.stage("after SFT", "the SFT model plays the test seeds with greedy answers")
            results["after SFT"] = self.on_main(lambda: self._evaluate_sft(records, results, sft_dir, budget))
        self.on_main(lambda: records.begin("ppo"))
        checks = f", a greedy check every {c.ppo_checks_every()} updates" if c.ppo_checks_every() else ""
        self.stage("ppo", f"{c.ppo_timesteps} env steps of PPO in {c.n_envs} envs x {c.n_steps} steps a rollout{checks}")
        model = self.ppo(sft_dir, budget, resume)
        self.stage("after PPO", "the PPO agent plays the same test seeds; then the table and the plots")
        return self.on_main(lambda: self._finish(records, results, model, sft_dir, budget, start))

    def _prepare(self, records: StageRecords, resume: bool, overwrite: bool) -> dict[str, EvalResult]:
        """Checks the recorded stages against this config (before anything is written) and writes config.json."""
        if not is_tiny(self.config.model):
            check_model_source(self.config.model)  # a missing checkpoint is named before anything is written
        for leftover in remove_stale_partials(self.out):
            self.say(f"removed {leftover}, the leftover of a write that was killed")
        results = self._cached_results()
        saved = unfinished_ppo_steps(self.out)
        redone = records.check(results, overwrite, resume)
        if saved is not None and not resume and not overwrite and "ppo" not in redone:
            raise RunRefused(f"{self.out} holds an unfinished PPO stage, saved at {saved} env steps: rerun with "
                             "--resume to continue it, or --overwrite to discard it and start PPO again")
        if redone:
            self.say(f"--overwrite: redoing {', '.join(redone)}" if overwrite else
                  f"--resume: PPO continues to {self.config.ppo_timesteps} env steps; redoing {', '.join(redone[1:])}")
            self._save_results(results)
        self.out.mkdir(parents=True, exist_ok=True)
        # Every output in out_dir now matches this config (or is about to be made with it).
        atomic_write_text(self.out / "config.json", json.dumps(self.config.to_dict(), indent=2))
        write_run_record(self.out, run_record(self.config.to_dict(), str(self.device)))
        return results

    def _evaluate_sft(self, records: StageRecords, results: dict[str, EvalResult], sft_dir: str, budget: int) -> EvalResult:
        records.begin("after SFT")
        results["after SFT"] = self.evaluate_checkpoint(sft_dir, budget, "after SFT")
        self._save_results(results)
        self._log_evaluation(results["after SFT"], 0)
        return results["after SFT"]

    def evaluate_checkpoint(self, sft_dir: str, budget: int, name: str = "after SFT") -> EvalResult:
        """The held-out evaluation of an SFT checkpoint, played as the main job plays it."""
        from vlm_policy.training.evaluation import eval_env_factory, standalone_policy

        env_kwargs = self.config.step_limit()
        if is_alfworld(self.config.env_id):
            env_kwargs["game_files"] = next(iter(self.evaluation_games.values()))
        env = eval_env_factory(self.config.env_id, sft_dir, budget, self.config.prompt_style, env_kwargs)()
        policy = standalone_policy(sft_dir, env, device=self.device, **self.evaluation_kwargs(sft_dir))
        return self.evaluate(policy, sft_dir, budget, name)[0]

    def _finish(self, records: StageRecords, results: dict[str, EvalResult], model, sft_dir: str, budget: int,
                start: float) -> list[EvalResult]:
        """The held-out evaluation after PPO, the table and the plots."""
        record = None
        if self.agent_reused and "after PPO" in results and (self.out / "episode_strip.png").is_file():
            # A finished run run again with the same settings (its stage records matched): the agent is
            # the one evaluated, so its evaluation stands (a 1,000-episode one takes minutes).
            self.say(f"the agent and its held-out evaluation are those in {self.out} (nothing changed since)")
        else:
            records.begin("after PPO")
            results["after PPO"], record = self.evaluate(model.policy, sft_dir, budget, "after PPO", record=True)
            self._save_results(results)
            self._log_evaluation(results["after PPO"], 1)
        rows = [results["after SFT"], results["after PPO"]]
        held_out = (f"the first {self.config.eval_episodes} games of {' and '.join(self.config.eval_splits)}"
                    if is_alfworld(self.config.env_id) else
                    f"{self.config.eval_episodes} held-out episodes (seeds from {self.config.eval_seed})")
        self.say(f"\n{self.config.env_id}: {held_out}, greedy answers, {time.perf_counter() - start:.0f} s in all")
        self.say(format_table(TABLE_HEADER, [r.row() for r in rows]))
        self.say(f"PPO made {model.num_timesteps * self.context.world_size} env steps "
                 f"(--ppo-timesteps {self.config.ppo_timesteps}; it stops early at a check that wins every episode)")
        from vlm_policy.training.callbacks import BEST_AGENT_DIR, VALIDATION_RECORD, kept_best, read_validation
        from vlm_policy.training.plots import plot_episode_strip, plot_learning_curve

        # Only a run that kept a best agent has one here: other PPO settings redo the stage, folder and all.
        kept = kept_best(self.out / BEST_AGENT_DIR)
        plot_learning_curve(self.out / "curve.jsonl", self.out / "learning_curve.png",
                            sft_success=results["after SFT"].success_rate, title=self.config.env_id,
                            ppo_success=results["after PPO"].success_rate,
                            validation=read_validation(self.out / VALIDATION_RECORD),
                            chosen_steps=kept["timesteps"] if kept else None)
        written = [self.out / "learning_curve.png"]
        if record:  # None: the strip of the evaluation reused above stands
            plot_episode_strip(record, self.out / "episode_strip.png", title=f"{self.config.env_id} after PPO")
            written.append(self.out / "episode_strip.png")
        self.say(f"wrote {' and '.join(map(str, written))}")
        if is_alfworld(self.config.env_id):
            self._alfworld_table()
        return rows

    def _alfworld_table(self) -> None:
        """Random admissible command and oracle on the same games, then a per-task-type table per split."""
        from alfworld_bridge.evaluation import AGENT_LABELS, Outcome, per_type_table, play_agents

        games = self.evaluation_games
        for name in AGENT_LABELS:
            if not self._episodes_file(name).is_file():
                self._write_outcomes(name, {split: play_agents(
                    [name], files, seed=self.config.eval_seed, progress=self.config.progress, env_id=self.config.env_id,
                    tag=split, **self.config.step_limit())[name] for split, files in games.items()})
        names = {**{label: name for name, label in AGENT_LABELS.items()}, "after SFT": "after SFT",
                 "after PPO": "after PPO"}
        outcomes = {label: [json.loads(line) for line in self._episodes_file(name).read_text().splitlines()]
                    for label, name in names.items()}
        sections = []
        for split in games:
            rows = {label: [Outcome(**{k: v for k, v in o.items() if k != "split"}) for o in found if o["split"] == split]
                    for label, found in outcomes.items()}
            sections.append(f"### {split}\n\n{per_type_table(rows)}\n")
        text = (f"{self.config.env_id} ({self.config.model}), success % / mean goal-condition %, "
                f"{self.config.env_kwargs().get('split')} demonstrations and PPO\n\n" + "\n".join(sections))
        atomic_write_text(self.out / "alfworld_table.md", text)
        self.say(text)

    def _cached_results(self) -> dict[str, EvalResult]:
        path = self.out / "results.json"
        if not path.is_file():
            return {}
        try:
            return {name: EvalResult(**row) for name, row in json.loads(path.read_text()).items()}
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path} is not a results table this package wrote ({error}); move it away or "
                             "choose a fresh --out-dir") from None

    def _save_results(self, results: dict[str, EvalResult]) -> None:
        atomic_write_text(self.out / "results.json", json.dumps({k: asdict(v) for k, v in results.items()}, indent=2))

    def _log_evaluation(self, result: EvalResult, step: int) -> None:
        """A held-out evaluation in TensorBoard too, when it is made: step 0 the SFT model, step 1 the PPO agent."""
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(self.out / "tb" / "evaluation")) as writer:
            for key in ("success_rate", "mean_return", "invalid_rate"):
                writer.add_scalar(f"evaluation/{key}", getattr(result, key), step)


def _pooled(name: str, results: list[EvalResult]) -> EvalResult:
    """One result over several evaluations' episodes (each weighted by its number of episodes)."""
    episodes = sum(r.episodes for r in results)
    steps = sum(r.mean_length * r.episodes for r in results)

    def mean(attribute: str) -> float:
        return sum(getattr(r, attribute) * r.episodes for r in results) / episodes

    invalid = sum(r.invalid_rate * r.mean_length * r.episodes for r in results) / max(steps, 1)
    return EvalResult(name=name, episodes=episodes, success_rate=mean("success_rate"), mean_return=mean("mean_return"),
                      invalid_rate=invalid, mean_length=steps / episodes)


def _final_is_whole(final: Path) -> bool:
    """Whether PPO's final agent is there and whole; a torn one (a crash of an older version, or
    damage since) is removed, and PPO runs again."""
    if not final.is_file():
        return False
    problem = checkpoint_problem(final)
    if problem is None:
        return True
    print(f"{final} is not whole ({problem}); PPO runs again")
    final.unlink()
    return False


def check_divides_across_processes(config: TrainConfig, world_size: int) -> None:
    """A data-parallel PPO run must end exactly at ``--ppo-timesteps``: every process makes whole rollouts."""
    per_rollout = world_size * config.n_envs * config.n_steps
    if config.ppo_timesteps % per_rollout:
        low = max(per_rollout, config.ppo_timesteps // per_rollout * per_rollout)
        raise ValueError(f"--ppo-timesteps {config.ppo_timesteps} is not a whole number of rollouts of all {world_size} "
                         f"processes ({world_size} x --n-envs {config.n_envs} x --n-steps {config.n_steps} = {per_rollout} "
                         f"env steps each); use {low} or {low + per_rollout}")


def unfinished_ppo_steps(out: Path) -> int | None:
    """The env steps of the newest checkpoint of an unfinished PPO stage in ``out``; None when it saved none
    or is finished."""
    from vlm_policy.training.callbacks import checkpoint_steps, saved_checkpoints

    saved = saved_checkpoints(out / "ppo" / "checkpoints")
    if not saved or (out / "ppo" / "final.zip").is_file():
        return None
    return checkpoint_steps(saved[-1])


def latest_checkpoint(directory: Path) -> Path | None:
    """The SB3 checkpoint with the most timesteps in ``directory`` that is whole, or None; a torn or
    unreadable newer one is skipped, and said so."""
    from vlm_policy.training.callbacks import saved_checkpoints

    for path in reversed(saved_checkpoints(directory)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        print(f"skipping checkpoint {path}: {problem}")
    return None
