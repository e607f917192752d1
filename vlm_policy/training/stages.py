"""The stages of the main job as small objects: demonstrations, SFT, PPO, evaluation and the report.

Each stage takes the :class:`Job` (the config, the run folder, the device and the processes) and makes its
output with one call; :class:`~vlm_policy.training.pipeline.Pipeline` orders them, records their settings
and skips what is done. They can also be called one by one (``examples/quickstart.py``)::

    job = Job(TrainConfig.from_settings(env_id="gym_cards/NumberLine-v0"))
    demos = Demonstrations(job).make()                    # out_dir/demos/demos.jsonl
    budget = Demonstrations(job).answer_budget(demos)
    sft_dir = SupervisedFineTuning(job).make(demos, budget)
    before = Evaluation(job).checkpoint(sft_dir, budget)
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from functools import cached_property, partial
from pathlib import Path
from typing import Any, TypeVar

from gym_vlm_cards.evaluate import TABLE_HEADER, EvalResult, format_table
from gym_vlm_cards.registration import registered_id
from vlm_policy import distributed
from vlm_policy.agents import checkpoint_problem
from vlm_policy.checkpoints import SFT_METADATA_FILE, atomic_path, atomic_write_text
from vlm_policy.env_bridge import frame_kwargs
from vlm_policy.loading import load_processor, resolve_device
from vlm_policy.optim import cosine_schedule
from vlm_policy.training.configs import (
    REACH_PROBABILITY,
    VALIDATION_SEED,
    TrainConfig,
    is_alfworld,
)
from vlm_policy.training.run_record import TRAIN_LOG, LogTee, append_log_lines

T = TypeVar("T")


class Job:
    """What every stage of one run shares: the resolved config, the run folder, the device and the
    processes (under torchrun every process runs every stage; rank 0 alone writes what is not training)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.out = Path(config.run.out_dir)
        self.context = distributed.current()
        self.device = distributed.device_for(self.context, str(resolve_device(config.common.device)))
        if not config.common.progress:  # --no-progress silences the libraries' bars too (loading and writing weights)
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

    def header(self, name: str, what: str) -> None:
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

    def policy_kwargs(self, model: str) -> dict[str, Any]:
        """VLMPolicy's settings for PPO from ``model`` (``PPO(VLMPolicy, env, policy_kwargs=this)``); the
        evaluations take those of them that bear on greedy answers (:meth:`evaluation_kwargs`)."""
        c, ppo = self.config, self.config.ppo
        return {"model": model, "temperature": ppo.temperature, "cot_weight": ppo.cot_weight, "lora_r": ppo.lora_r,
                "train_vision": ppo.train_vision, "value_lr_scale": ppo.value_lr_scale,
                "value_gradients_to_model": ppo.value_gradients_to_model, "kl_coef": ppo.kl_coef,
                "gradient_checkpointing": c.model.gradient_checkpointing == "on", "micro_batch_size": c.model.micro_batch,
                "compute_entropy": ppo.ent_coef > 0, "dtype": c.model.dtype, "constrain_actions": ppo.constrain_actions,
                "device": self.device, "seed": c.common.seed, "env_id": registered_id(c.task.env_id),
                "env_settings": {"prompt_style": c.task.prompt_style, "history_length": c.task.history_length}}

    def evaluation_kwargs(self, model: str) -> dict[str, Any]:
        """The settings of :meth:`policy_kwargs` that a policy outside PPO (an evaluation) takes."""
        return {k: v for k, v in self.policy_kwargs(model).items()
                if k in ("temperature", "cot_weight", "lora_r", "micro_batch_size", "dtype", "seed", "constrain_actions")}

    def checkpoint_policy(self, model: str, env) -> Any:
        """The policy an evaluation plays a checkpoint (or 'tiny') with, on the spaces of ``env``."""
        from vlm_policy.training.evaluation import standalone_policy

        return standalone_policy(model, env, device=self.device, **self.evaluation_kwargs(model))

    def eval_env(self, model: str, budget: int, env_kwargs: dict[str, Any], inner=None) -> Callable[[], Any]:
        """A function making one evaluation env of the task for ``model``, as PPO's envs are made (``inner``:
        see :func:`~vlm_policy.training.evaluation.eval_env_factory`)."""
        from vlm_policy.training.evaluation import eval_env_factory

        c = self.config
        return eval_env_factory(c.task.env_id, model, budget, c.task.prompt_style, env_kwargs, c.ppo.constrain_actions, inner)

    def play_validation(self, policy, make_env: Callable[[], Any], episodes: int) -> float:
        """The share of ``episodes`` validation episodes (seeds from :data:`VALIDATION_SEED`) that ``policy``'s
        greedy answers win, ``--eval-batch`` of them stepping together in one batched generate. An episode
        whose state comes back is lost there and then (``end_loops``): played out, it would loop to its limit."""
        from vlm_policy.training.evaluation import evaluate_vlm

        result, _ = evaluate_vlm(policy, make_env, episodes, VALIDATION_SEED, parallel=self.config.evaluation.eval_batch,
                                 name="validation", end_loops=True)
        return result.success_rate


class Stage:
    """A stage of the main job: its ``name`` (that of its record in ``out_dir/stages``) and the :class:`Job`
    it works for; ``make(...)`` returns its output."""

    name = ""

    def __init__(self, job: Job) -> None:
        self.job = job

    def describe(self) -> str:
        """What the stage will do, for its header line in the log."""
        return self.name


class Demonstrations(Stage):
    """The oracle plays ``--demos`` steps; its frames and answers become ``out_dir/demos`` (kept when whole)."""

    name = "demos"

    def describe(self) -> str:
        c = self.job.config
        return f"the oracle plays {c.task.demos} steps of {c.task.env_id} (kept when {self.job.out / 'demos'} has them)"

    def make(self) -> Path:
        """The demonstrations file (chat-messages JSONL beside its PNG frames)."""
        from vlm_policy.training.demos import DEMOS_FILE, set_size, write_demonstrations

        c, folder = self.job.config, self.job.out / "demos"
        if set_size(folder) == c.task.demos:
            return folder / DEMOS_FILE
        env_kwargs = frame_kwargs(c.task.env_id, load_processor(c.model.model), c.task.env_kwargs())
        return write_demonstrations(c.task.env_id, c.task.demos, folder, seed=c.common.seed,
                                    chain_of_thought=c.task.prompt_style == "cot", env_kwargs=env_kwargs)

    def answer_budget(self, demos: Path) -> int:
        """The answer budget: ``--max-new-tokens``, or (auto) one that fits every demonstration answer.

        A configured budget shorter than a demonstration answer is an error: SFT would teach answers
        that generation can never finish.
        """
        asked = self.job.config.run.max_new_tokens
        if asked == 0:
            return self.answer_rule(demos)
        longest = self._longest_answer(demos)
        if asked < longest:
            raise ValueError(f"--max-new-tokens {asked} is shorter than the longest demonstration answer ({longest} "
                             f"tokens): use at least {longest}, or auto to size it from the demonstrations")
        return asked


    def answer_rule(self, demos: Path | None = None) -> int:
        """``--max-new-tokens auto``: the longest answer of ``demos`` (default: the run's) with room to spare."""
        from vlm_policy.training.demos import DEMOS_FILE, answer_token_budget

        return answer_token_budget(self._longest_answer(demos or self.job.out / "demos" / DEMOS_FILE))

    def _longest_answer(self, demos: Path) -> int:
        from vlm_policy.training.demos import longest_answer_tokens, read_answers

        return longest_answer_tokens(read_answers(demos), load_processor(self.job.config.model.model).tokenizer)


class SupervisedFineTuning(Stage):
    """Fine-tunes the model on the demonstrations into ``out_dir/sft``, stopped by its validation checks."""

    name = "sft"

    def describe(self) -> str:
        c = self.job.config
        stop = f", stopped once a check's reach is {c.sft.sft_stop_reach:.0%}" if c.sft.sft_stop_reach else ""
        return f"fine-tunes {c.model.model} on them for up to {c.sft.sft_steps} steps{stop}"

    def make(self, demos: Path, budget: int = 0) -> str:
        """The SFT checkpoint's folder (absolute: PPO's agent records it and must load from anywhere)."""
        from vlm_policy.training.demos import read_demonstrations
        from vlm_policy.training.sft import run_sft

        directory = (self.job.out / "sft").resolve()
        if (directory / SFT_METADATA_FILE).is_file():
            return str(directory)
        c = self.job.config
        validate = self.validation(budget or Demonstrations(self.job).answer_budget(demos)) if c.sft.stop_targets() else None
        return str(run_sft(read_demonstrations(demos), directory, sft=c.sft, model=c.model, common=c.common,
                           validation=validate, tensorboard_dir=self.job.out / "tb"))

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
        c, device = self.job.config, self.job.device
        frames: list = []

        def reach(bundle) -> float:
            from vlm_policy.distribution import TokenSequenceDistribution
            from vlm_policy.loading import resolve_dtype
            from vlm_policy.training.demos import oracle_episode_examples

            if not frames:  # the same frames at every check: made once
                env_kwargs = frame_kwargs(c.task.env_id, bundle.processor, c.task.env_kwargs())
                frames.extend(oracle_episode_examples(c.task.env_id, c.sft.sft_check_episodes, VALIDATION_SEED,
                                                      c.task.prompt_style == "cot", env_kwargs))
            distribution = TokenSequenceDistribution.for_bundle(bundle, c.ppo.temperature, budget, c.model.micro_batch,
                                                                resolve_dtype(c.model.dtype, device))
            log_probs = distribution.answer_log_probs([f.image for f in frames], [f.prompt for f in frames],
                                                      [f.answer for f in frames], device)
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

        job, c = self.job, self.job.config

        def check(bundle) -> float:
            with tempfile.TemporaryDirectory(prefix="sft-check-") as folder:
                snapshot = save_sft_checkpoint(dataclasses.replace(bundle, model=copy.deepcopy(bundle.model)),
                                               Path(folder) / "sft", {})
                make_env = job.eval_env(str(snapshot), budget, c.task.env_kwargs())
                policy = job.checkpoint_policy(str(snapshot), make_env())
                return job.play_validation(policy, make_env, c.sft.sft_check_episodes)

        return check


class Relabelling(Stage):
    """DAgger after SFT (:mod:`vlm_policy.training.relabel`): in each of ``--relabel-rounds`` rounds the model
    plays ``--relabel-episodes`` training episodes with sampled answers, the expert labels every state it
    reaches (``out_dir/relabel/round_<k>/demos``), and SFT goes on from the model over the demonstrations
    and every round's labels (``round_<k>/sft``, the next round's player)."""

    name = "relabel"

    def __init__(self, job: Job, sft: SupervisedFineTuning) -> None:
        super().__init__(job)
        self.sft = sft

    def describe(self) -> str:
        c = self.job.config
        return (f"{c.relabel.relabel_rounds} round(s): the model plays {c.relabel.relabel_episodes} training episodes, "
                "the expert labels every state it reaches, SFT goes on over the demonstrations and the labels")

    def make(self, demos: Path, sft_dir: str, budget: int) -> str:
        """The folder of the last round's SFT checkpoint (each round is kept, and skipped when whole)."""
        from dataclasses import replace

        from vlm_policy.training.demos import read_demonstrations, set_size
        from vlm_policy.training.sft import run_sft

        job, c = self.job, self.job.config
        sets, current = [Path(demos)], sft_dir
        for number in range(1, c.relabel.relabel_rounds + 1):
            folder = job.out / "relabel" / f"round_{number}"
            checkpoint = (folder / "sft").resolve()
            if set_size(folder / "demos") is None:
                job.on_main(partial(self._label, current, budget, number, folder / "demos"))
            sets.append(folder / "demos")
            if not (checkpoint / SFT_METADATA_FILE).is_file():
                examples = [example for labelled in sets for example in read_demonstrations(labelled)]
                validate = self.sft.validation(budget) if c.sft.stop_targets() else None
                # The run's model settings are resolved (a checkpoint folder of the tiny model is still the
                # tiny model: no gradient checkpointing).
                run_sft(examples, checkpoint, sft=replace(c.sft, vision_warmup_steps=0),
                        model=replace(c.model, model=current), common=c.common, validation=validate,
                        tensorboard_dir=job.out / "tb", tensorboard_name=f"relabel_{number}")
            current = str(checkpoint)
        return current

    def _label(self, model: str, budget: int, number: int, folder: Path) -> None:
        """One round's labels: the model at ``model`` plays, the expert labels its states."""
        import torch

        from vlm_policy.training.demos import write_example_set
        from vlm_policy.training.relabel import RELABEL_SEED, describe_labels, labelled_agent_play

        job, c = self.job, self.job.config
        policy = job.checkpoint_policy(model, job.eval_env(model, budget, c.task.env_kwargs())())
        torch.manual_seed(c.common.seed + number)  # the answers are sampled: the same round samples the same
        seed = RELABEL_SEED + (number - 1) * c.relabel.relabel_episodes
        steps = labelled_agent_play(policy, lambda inner: job.eval_env(model, budget, c.task.env_kwargs(), inner),
                                    c.relabel.relabel_episodes, seed, c.task.prompt_style == "cot", c.evaluation.eval_batch)
        job.say(f"relabel round {number}: {describe_labels(steps)} in {c.relabel.relabel_episodes} episodes of the model")
        write_example_set(steps, folder, {"env_id": c.task.env_id, "seed": seed, "relabel_round": number,
                                          "chain_of_thought": c.task.prompt_style == "cot"})


class Evaluation(Stage):
    """The held-out evaluations (greedy answers on the test seeds, or ALFWorld's evaluation games), their
    ``results.json`` rows, TensorBoard entries and, on ALFWorld, each game's outcome."""

    name = "evaluation"

    def evaluate(self, policy, model: str, budget: int, name: str, record: bool = False):
        """The held-out evaluation's result and, with ``record``, the episodes the strip shows: a won and a lost
        one where the first episodes have both (ALFWorld: the first game)."""
        from vlm_policy.training.evaluation import evaluate_vlm

        c = self.job.config
        if is_alfworld(c.task.env_id):
            result, first = self._evaluate_games(policy, model, budget, name, record)
            return result, [first] if first is not None else None
        make_env = self.job.eval_env(model, budget, c.task.play_kwargs())
        examples = {} if record else None
        result, _ = evaluate_vlm(policy, make_env, c.evaluation.eval_episodes, c.evaluation.eval_seed,
                                 parallel=c.evaluation.eval_batch, name=name, progress=c.common.progress, examples=examples)
        return result, [examples[won] for won in (True, False) if won in examples] if record else None

    def checkpoint(self, sft_dir: str, budget: int, name: str = "after SFT") -> EvalResult:
        """The held-out evaluation of an SFT checkpoint, played as the main job plays it."""
        c = self.job.config
        env_kwargs = c.task.play_kwargs()
        if is_alfworld(c.task.env_id):
            env_kwargs["game_files"] = next(iter(self.games.values()))
        env = self.job.eval_env(sft_dir, budget, env_kwargs)()
        policy = self.job.checkpoint_policy(sft_dir, env)
        return self.evaluate(policy, sft_dir, budget, name)[0]

    @cached_property
    def games(self) -> dict[str, list[str]]:
        """ALFWorld: the games each evaluation split plays (the first --eval-episodes, task types in turn);
        found once per run (it reads every game's ``traj_data.json``)."""
        from alfworld_bridge.evaluation import evaluation_games

        c = self.job.config
        return {split: [str(g) for g in evaluation_games(c.task.data_root or None, split, c.evaluation.eval_episodes)]
                for split in c.evaluation.eval_splits}

    def _evaluate_games(self, policy, model: str, budget: int, name: str, record: bool):
        """ALFWorld: every evaluation game once per split; the outcomes go to ``episodes/<name>.jsonl``."""
        from vlm_policy.training.evaluation import evaluate_vlm_on_games

        c = self.job.config
        results, first_record, outcomes = [], None, {}
        for split, games in self.games.items():
            make_env = self.job.eval_env(model, budget, {"game_files": games, **c.task.play_kwargs()})
            result, episode_record, outcomes[split] = evaluate_vlm_on_games(
                policy, make_env, len(games), c.evaluation.eval_seed, name=f"{name} {split}", parallel=c.evaluation.eval_batch,
                record_first=record and first_record is None, progress=c.common.progress,
                subprocesses=True)  # a reset loads a game: the envs step side by side
            results.append(result)
            first_record = first_record or episode_record
        self.write_outcomes(name, outcomes)
        return _pooled(name, results), first_record

    def episodes_file(self, name: str) -> Path:
        return self.job.out / "episodes" / f"{name.replace(' ', '_')}.jsonl"

    def write_outcomes(self, name: str, by_split: dict[str, list]) -> None:
        """``episodes/<name>.jsonl``: each game's outcome, with its split."""
        path = self.episodes_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"split": split, **o.to_dict()}) for split, outcomes in by_split.items() for o in outcomes]
        atomic_write_text(path, "\n".join(lines) + "\n")

    # ------------------------------------------------------------ results.json and TensorBoard
    def cached_results(self) -> dict[str, EvalResult]:
        """The rows of ``results.json`` (empty when there is none)."""
        path = self.job.out / "results.json"
        if not path.is_file():
            return {}
        try:
            return {name: EvalResult(**row) for name, row in json.loads(path.read_text()).items()}
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path} is not a results table this package wrote ({error}); move it away or "
                             "choose a fresh --out-dir") from None

    def save_results(self, results: dict[str, EvalResult]) -> None:
        atomic_write_text(self.job.out / "results.json",
                          json.dumps({k: asdict(v) for k, v in results.items()}, indent=2))

    def log(self, result: EvalResult, step: int) -> None:
        """A held-out evaluation in TensorBoard too, when it is made: step 0 the SFT model, step 1 the PPO agent."""
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(self.job.out / "tb" / "evaluation")) as writer:
            for key in ("success_rate", "mean_return", "invalid_rate"):
                writer.add_scalar(f"evaluation/{key}", getattr(result, key), step)

    def _reference_slots(self, games: int):
        """How the reference agents' envs are made for ``games`` games: as the model's evaluations'
        (:func:`~vlm_policy.subprocess_envs.env_slots`)."""
        from vlm_policy.subprocess_envs import env_slots

        return partial(env_slots, n=min(self.job.config.evaluation.eval_batch, games))

    def alfworld_table(self) -> None:
        """Random admissible command and oracle on the same games, then a per-task-type table per split."""
        from alfworld_bridge.evaluation import AGENT_LABELS, Outcome, per_type_table, play_agents

        c = self.job.config
        for name in AGENT_LABELS:
            if not self.episodes_file(name).is_file():
                self.write_outcomes(name, {split: play_agents(
                    [name], files, seed=c.evaluation.eval_seed, progress=c.common.progress, env_id=c.task.env_id, tag=split,
                    slots=self._reference_slots(len(files)), **c.task.play_kwargs())[name]
                    for split, files in self.games.items()})
        names = {**{label: name for name, label in AGENT_LABELS.items()}, "after SFT": "after SFT",
                 "after PPO": "after PPO"}
        outcomes = {label: [json.loads(line) for line in self.episodes_file(name).read_text().splitlines()]
                    for label, name in names.items()}
        sections = []
        for split in self.games:
            rows = {label: [Outcome(**{k: v for k, v in o.items() if k != "split"}) for o in found if o["split"] == split]
                    for label, found in outcomes.items()}
            sections.append(f"### {split}\n\n{per_type_table(rows)}\n")
        text = (f"{c.task.env_id} ({c.model.model}), success % / mean goal-condition %, "
                f"{c.task.env_kwargs().get('split')} demonstrations and PPO\n\n" + "\n".join(sections))
        atomic_write_text(self.job.out / "alfworld_table.md", text)
        self.job.say(text)


class ProximalPolicyOptimization(Stage):
    """SB3's ``PPO(VLMPolicy, env)`` from the SFT checkpoint, with the run's callbacks (checkpoints, rollout
    curve, greedy validation checks, best-agent keeping, the stop on validation success); its agent is
    ``out_dir/ppo/final.zip``."""

    name = "ppo"

    def __init__(self, job: Job) -> None:
        super().__init__(job)
        #: Whether the latest :meth:`make` loaded a finished run's whole final agent instead of training one.
        self.agent_reused = False

    def describe(self) -> str:
        c = self.job.config
        checks = f", a greedy check every {c.ppo.ppo_check_every} updates" if c.ppo.ppo_check_every else ""
        return f"{c.ppo.ppo_timesteps} env steps of PPO in {c.ppo.n_envs} envs x {c.ppo.n_steps} steps a rollout{checks}"

    def arguments(self) -> dict[str, Any]:
        """SB3 ``PPO``'s own arguments as the main job sets them (``PPO(VLMPolicy, env, **this, policy_kwargs=...)``)."""
        ppo, context = self.job.config.ppo, self.job.context
        return {"learning_rate": cosine_schedule(ppo.learning_rate, ppo.learning_rate_end), "n_steps": ppo.n_steps,
                "batch_size": ppo.batch_size, "n_epochs": ppo.n_epochs, "gamma": ppo.gamma, "gae_lambda": ppo.gae_lambda,
                "clip_range": ppo.clip_range, "ent_coef": ppo.ent_coef, "vf_coef": ppo.vf_coef,
                # Data-parallel: the early stop is taken on the KL of all processes (distributed.py).
                "target_kl": (ppo.target_kl or None) if not context.enabled else None,
                "max_grad_norm": ppo.max_grad_norm, "seed": self.job.config.common.seed + context.rank,
                "device": self.job.device}

    def policy_kwargs(self, model: str) -> dict[str, Any]:
        """VLMPolicy's settings for PPO from ``model`` (see :meth:`Job.policy_kwargs`)."""
        return self.job.policy_kwargs(model)

    def validation(self, sft_dir: str, budget: int) -> Callable[[Any], float]:
        """PPO's check: the share of ``--ppo-check-episodes`` validation episodes (seeds from
        :data:`VALIDATION_SEED`) that a policy's greedy answers win, played as "after PPO" plays its agent."""
        c = self.job.config
        make_env = self.job.eval_env(sft_dir, budget, c.task.env_kwargs())
        return lambda policy: self.job.play_validation(policy, make_env, c.ppo.ppo_check_episodes)

    def make(self, sft_dir: str, budget: int, resume: bool):
        """The trained PPO model (SB3's), from ``--resume``'s newest whole checkpoint where asked."""
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

        job, c = self.job, self.job.config
        context, out = job.context, job.out
        main = context.is_main
        final = out / "ppo" / "final.zip"
        # Each process plays its own envs: rank r's episodes are seeded apart from every other rank's.
        subprocesses = None
        if is_alfworld(c.task.env_id) and c.ppo.n_envs > 1:  # a reset loads a game (~1 s): the envs step side by side
            from stable_baselines3.common.vec_env import SubprocVecEnv

            from vlm_policy.subprocess_envs import preload_in_subprocesses

            preload_in_subprocesses()
            subprocesses = SubprocVecEnv
        env = make_vlm_vec_env(c.task.env_id, n_envs=c.ppo.n_envs, model=sft_dir, seed=c.common.seed + 1 + 100_000 * context.rank,
                               max_new_tokens=budget, prompt_style=c.task.prompt_style, env_kwargs=c.task.env_kwargs(),
                               vec_env_cls=subprocesses, constrain_actions=c.ppo.constrain_actions)
        # Agents are read without unpickling (load_agent); training state comes from the config.
        schedule = cosine_schedule(c.ppo.learning_rate, c.ppo.learning_rate_end)
        training = {"learning_rate": schedule, "clip_range": c.ppo.clip_range}
        if context.enabled:  # the early stop is agreed across processes through this buffer (distributed.py)
            training["rollout_buffer_class"] = distributed.AgreedStopRolloutBuffer
        self.agent_reused = job.on_main(lambda: _final_is_whole(final))
        if self.agent_reused:
            return load_agent(final, env, device=job.device, **training)
        checkpoint = job.on_main(lambda: latest_checkpoint(out / "ppo" / "checkpoints")) if resume else None
        if checkpoint is not None:
            if main:
                job.say(f"resuming PPO from {checkpoint}")
                keep_points_up_to(out / "curve.jsonl", checkpoint_steps(checkpoint))  # the rest are made again
            model = load_agent(checkpoint, env, device=job.device, **training)
        else:
            if main:  # a fresh start (nothing saved, or --overwrite): nothing of an earlier attempt is kept
                for leftover in (out / "curve.jsonl", out / VALIDATION_RECORD):
                    leftover.unlink(missing_ok=True)
                for leftover in (out / "ppo" / "checkpoints", out / BEST_AGENT_DIR):
                    shutil.rmtree(leftover, ignore_errors=True)
            model = PPO(VLMPolicy, env, **self.arguments(), policy_kwargs=self.policy_kwargs(sft_dir),
                        rollout_buffer_class=training.get("rollout_buffer_class"),
                        tensorboard_log=str(out / "tb") if main else None, verbose=0)
        if not main:  # rank 0 logs alone; SB3 would make a /tmp/SB3-<time> folder for each other process
            from stable_baselines3.common.logger import Logger

            model.set_logger(Logger(folder=None, output_formats=[]))
        # --ppo-timesteps counts the env steps of every process; each makes its share.
        remaining = c.ppo.ppo_timesteps // context.world_size - model.num_timesteps
        callbacks = [VLMRolloutLogger(out / "curve.jsonl" if main else None, pool_processes=True),
                     HyperparameterLogger(c.settings())]
        if main:
            callbacks.insert(0, UpdateCheckpointCallback(out / "ppo" / "checkpoints", keep=c.ppo.keep_checkpoints,
                                                         steps_scale=context.world_size))
        checks_every = c.ppo.ppo_check_every
        if checks_every:
            after_check = ([KeepBestAgent(out / BEST_AGENT_DIR)] if main and c.ppo.ppo_keep_best else []) + (
                [StopOnValidationSuccess(c.ppo.ppo_stop_success)] if c.ppo.ppo_stop_success else [])
            callbacks.append(GreedyValidationCallback(
                self.validation(sft_dir, budget), out / VALIDATION_RECORD if main else None,
                every=checks_every, steps_scale=context.world_size,
                callback_after_check=CallbackList(after_check) if after_check else None))
        if remaining > 0:
            with distributed.data_parallel(model, c.ppo.target_kl):
                model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=checkpoint is None,
                            tb_log_name="ppo", progress_bar=c.common.progress and main)
        if checks_every and c.ppo.ppo_keep_best:
            self._hand_over_best(model)
        if context.enabled:
            distributed.check_same_weights(model.policy, "PPO weights")
        if main:
            with atomic_path(out / "ppo" / "adapter") as temporary:
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

        job = self.job
        steps = model.num_timesteps * job.context.world_size
        best_dir = job.out / BEST_AGENT_DIR
        # Rank 0 wrote the folder before it reads it here, and the others hear of it only through this broadcast.
        kept = job.on_main(lambda: kept_best(best_dir))
        if kept is None:
            return
        # Loaded even when it was checked at this step count: after a resume it may be the interrupted
        # attempt's agent, and the agent handed over is always the one its check scored.
        model.set_parameters(str(best_dir / BEST_AGENT_FILE), exact_match=True, device=job.device)
        if not job.context.is_main:
            return
        checks = read_validation(job.out / VALIDATION_RECORD)
        # A run stopped by --ppo-stop-success ends one env step past its last check, the same agent's.
        last_check = checks[-1]["timesteps"] if checks else steps
        if kept["timesteps"] != last_check:
            after = f", the last update's {checks[-1]['success_rate']:.1%}" if checks else ""
            start = " (the starting SFT model)" if kept["timesteps"] == 0 else ""
            job.say(f"PPO's agent is the one checked at {kept['timesteps']} env steps{start}: greedy answers win "
                    f"{kept['success_rate']:.1%} of the validation episodes{after}")


class Report(Stage):
    """The before/after table, ``learning_curve.png``, ``episode_strip.png`` and, on ALFWorld, the per-task-type
    table."""

    name = "report"

    def __init__(self, job: Job, evaluation: Evaluation) -> None:
        super().__init__(job)
        self.evaluation = evaluation

    def make(self, rows: list[EvalResult], ppo_steps: int, record: list | None, seconds: float) -> None:
        """``rows``: after SFT and after PPO; ``record``: the episodes the strip shows (None: the strip of an
        evaluation that was reused stands)."""
        from vlm_policy.training.callbacks import BEST_AGENT_DIR, VALIDATION_RECORD, kept_best, read_validation
        from vlm_policy.training.plots import plot_episode_strip, plot_learning_curve

        job, c, out = self.job, self.job.config, self.job.out
        evaluation = c.evaluation
        held_out = (f"the first {evaluation.eval_episodes} games of {' and '.join(evaluation.eval_splits)}"
                    if is_alfworld(c.task.env_id)
                    else f"{evaluation.eval_episodes} held-out episodes (seeds from {evaluation.eval_seed})")
        job.say(f"\n{c.task.env_id}: {held_out}, greedy answers, {seconds:.0f} s in all")
        job.say(format_table(TABLE_HEADER, [r.row() for r in rows]))
        ended = ("stopped early: a check won every validation episode" if ppo_steps < c.ppo.ppo_timesteps
                 else "the whole budget")
        job.say(f"PPO made {ppo_steps} env steps (--ppo-timesteps {c.ppo.ppo_timesteps}: {ended})")
        # Only a run that kept a best agent has one here: other PPO settings redo the stage, folder and all.
        kept = kept_best(out / BEST_AGENT_DIR)
        plot_learning_curve(out / "curve.jsonl", out / "learning_curve.png", sft_success=rows[0].success_rate,
                            title=c.task.env_id, ppo_success=rows[1].success_rate,
                            validation=read_validation(out / VALIDATION_RECORD),
                            chosen_steps=kept["timesteps"] if kept else None)
        written = [out / "learning_curve.png"]
        if record:
            plot_episode_strip(record, out / "episode_strip.png", title=f"{c.task.env_id} after PPO")
            written.append(out / "episode_strip.png")
        job.say(f"wrote {' and '.join(map(str, written))}")
        if is_alfworld(c.task.env_id):
            self.evaluation.alfworld_table()


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
