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

The stages themselves are the objects of :mod:`vlm_policy.training.stages`; this module orders them,
checks and writes their records (:mod:`vlm_policy.training.stage_records`), and holds the run folder.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from gym_vlm_cards.evaluate import EvalResult
from vlm_policy.checkpoints import atomic_write_text
from vlm_policy.loading import check_model_source, is_tiny
from vlm_policy.optim import cosine_schedule
from vlm_policy.training.configs import TrainConfig
from vlm_policy.training.run_folder import FolderLock, RunRefused, remove_stale_partials
from vlm_policy.training.run_record import TRAIN_LOG, LogTee, run_record, write_run_record
from vlm_policy.training.stage_records import StageRecords
from vlm_policy.training.stages import (
    Demonstrations,
    Evaluation,
    Job,
    ProximalPolicyOptimization,
    Relabelling,
    Report,
    SupervisedFineTuning,
    latest_checkpoint,
)

__all__ = ["Pipeline", "TrainConfig", "cosine_schedule", "latest_checkpoint"]


class Pipeline:
    """Runs the stages of :class:`TrainConfig` in order; each one is resumable. Nothing is written
    before :meth:`run` (or a stage's own ``make``) is called.

    The stages are attributes (``pipeline.demos``, ``.sft``, ``.ppo``, ``.evaluation``, ``.report``) sharing
    :attr:`job`. Under torchrun (:mod:`vlm_policy.distributed`) every process runs the pipeline: SFT and PPO
    train data-parallel on all of them; the demonstrations, stage records, evaluations, results and plots
    are made by rank 0 alone (the others wait and receive what it made). ``out_dir`` must be one folder
    every process sees (a shared filesystem across nodes).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.job = Job(config)
        self.out = self.job.out
        if self.job.context.enabled:
            check_divides_across_processes(config, self.job.context.world_size)
        self.demos = Demonstrations(self.job)
        self.sft = SupervisedFineTuning(self.job)
        self.relabel = Relabelling(self.job, self.sft)
        self.evaluation = Evaluation(self.job)
        self.ppo = ProximalPolicyOptimization(self.job)
        self.report = Report(self.job, self.evaluation)

    def run(self, resume: bool = False, overwrite: bool = False) -> list[EvalResult]:
        """Runs every stage not already done with these settings.

        :param resume: continue PPO from its newest whole checkpoint (else an unfinished PPO stage
            starts again).
        :param overwrite: redo the stages made with other settings (and every later one) instead
            of stopping with the differences named.
        """
        lock = FolderLock(self.out)
        self.job.on_main(lock.acquire)  # one run at a time in out_dir: a second one is refused
        try:
            return self._run_stages(resume, overwrite)
        finally:
            if self.job.context.is_main:
                lock.release()

    def _run_stages(self, resume: bool, overwrite: bool) -> list[EvalResult]:
        start = time.perf_counter()
        records = StageRecords(self.out, self.config, answer_rule=self.demos.answer_rule)
        results = self.job.on_main(lambda: self._prepare(records, resume, overwrite))
        # From here on the folder is this run's: what rank 0 prints goes to train.log too.
        with LogTee(self.out / TRAIN_LOG) if self.job.context.is_main else contextlib.nullcontext():
            return self._make_stages(records, results, resume, start)

    def _make_stages(self, records: StageRecords, results: dict[str, EvalResult], resume: bool,
                     start: float) -> list[EvalResult]:
        job, on_main = self.job, self.job.on_main

        def begin(stage) -> None:  # its record first (rank 0), then its header line
            on_main(lambda: records.begin(stage.name))
            job.header(stage.name, stage.describe())

        begin(self.demos)
        demos = on_main(self.demos.make)
        budget = self.demos.answer_budget(demos)
        on_main(lambda: self._write_config(budget))
        begin(self.sft)
        sft_dir = self.sft.make(demos, budget)
        if self.config.relabel.relabel_rounds:
            begin(self.relabel)
            sft_dir = self.relabel.make(demos, sft_dir, budget)
        if "after SFT" not in results:
            job.header("after SFT", "the SFT model plays the test seeds with greedy answers")
            results["after SFT"] = on_main(lambda: self._evaluate("after SFT", records, results,
                                                                  lambda: self.evaluation.checkpoint(sft_dir, budget)))
        begin(self.ppo)
        model = self.ppo.make(sft_dir, budget, resume)
        job.header("after PPO", "the PPO agent plays the same test seeds; then the table and the plots")
        return on_main(lambda: self._finish(records, results, model, sft_dir, budget, start))

    def _prepare(self, records: StageRecords, resume: bool, overwrite: bool) -> dict[str, EvalResult]:
        """Checks the recorded stages against this config (before anything is written) and writes config.json."""
        if not is_tiny(self.config.model.model):
            check_model_source(self.config.model.model)  # a missing checkpoint is named before anything is written
        for leftover in remove_stale_partials(self.out):
            self.job.say(f"removed {leftover}, the leftover of a write that was killed")
        results = self.evaluation.cached_results()
        saved = unfinished_ppo_steps(self.out)
        redone = records.check(results, overwrite, resume)
        if saved is not None and not resume and not overwrite and "ppo" not in redone:
            raise RunRefused(f"{self.out} holds an unfinished PPO stage, saved at {saved} env steps: rerun with "
                             "--resume to continue it, or --overwrite to discard it and start PPO again")
        if redone:
            self.job.say(f"--overwrite: redoing {', '.join(redone)}" if overwrite else
                         f"--resume: PPO continues to {self.config.ppo.ppo_timesteps} env steps; redoing "
                         f"{', '.join(redone[1:])}")
            self.evaluation.save_results(results)
        self.out.mkdir(parents=True, exist_ok=True)
        # Every output in out_dir now matches this config (or is about to be made with it).
        self._write_config(self.config.run.max_new_tokens)
        write_run_record(self.out, run_record(self.config.to_dict(), str(self.job.device)))
        return results

    def _write_config(self, answer_length: int) -> None:
        """``config.json``: the settings, with the answer length once the demonstrations have measured it."""
        settings = self.config.to_dict()
        settings["run"]["max_new_tokens"] = answer_length
        atomic_write_text(self.out / "config.json", json.dumps(settings, indent=2))

    def _evaluate(self, name: str, records: StageRecords, results: dict[str, EvalResult], evaluate) -> EvalResult:
        """One held-out evaluation (``evaluate()``) recorded, saved into ``results.json`` and TensorBoard."""
        records.begin(name)
        results[name] = evaluate()
        self.evaluation.save_results(results)
        self.evaluation.log(results[name], 0 if name == "after SFT" else 1)
        return results[name]

    def _finish(self, records: StageRecords, results: dict[str, EvalResult], model, sft_dir: str, budget: int,
                start: float) -> list[EvalResult]:
        """The held-out evaluation after PPO, the table and the plots."""
        record = None
        if self.ppo.agent_reused and "after PPO" in results and (self.out / "episode_strip.png").is_file():
            # A finished run run again with the same settings (its stage records matched): the agent is
            # the one evaluated, so its evaluation stands (a 1,000-episode one takes minutes).
            self.job.say(f"the agent and its held-out evaluation are those in {self.out} (nothing changed since)")
        else:
            def evaluate() -> EvalResult:
                nonlocal record
                result, record = self.evaluation.evaluate(model.policy, sft_dir, budget, "after PPO", record=True)
                return result

            self._evaluate("after PPO", records, results, evaluate)
        rows = [results["after SFT"], results["after PPO"]]
        self.report.make(rows, model.num_timesteps * self.job.context.world_size, record, time.perf_counter() - start)
        return rows


def check_divides_across_processes(config: TrainConfig, world_size: int) -> None:
    """A data-parallel PPO run must end exactly at ``--ppo-timesteps``: every process makes whole rollouts."""
    ppo = config.ppo
    per_rollout = world_size * ppo.n_envs * ppo.n_steps
    if ppo.ppo_timesteps % per_rollout:
        low = max(per_rollout, ppo.ppo_timesteps // per_rollout * per_rollout)
        raise ValueError(f"--ppo-timesteps {ppo.ppo_timesteps} is not a whole number of rollouts of all {world_size} "
                         f"processes ({world_size} x --n-envs {ppo.n_envs} x --n-steps {ppo.n_steps} = {per_rollout} "
                         f"env steps each); use {low} or {low + per_rollout}")


def unfinished_ppo_steps(out: Path) -> int | None:
    """The env steps of the newest checkpoint of an unfinished PPO stage in ``out``; None when it saved none
    or is finished."""
    from vlm_policy.training.callbacks import checkpoint_steps, saved_checkpoints

    saved = saved_checkpoints(out / "ppo" / "checkpoints")
    if not saved or (out / "ppo" / "final.zip").is_file():
        return None
    return checkpoint_steps(saved[-1])
