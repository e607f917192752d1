"""SB3 callbacks for VLM training: what PPO's logger does not record by itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EventCallback


class VLMRolloutLogger(BaseCallback):
    """Logs the invalid-action rate and a sample chain of thought each rollout, and appends the
    rollout's success rate to ``curve_path`` (JSON lines, survives interruptions) for the plot.

    With a KL penalty (``VLMPolicy(kl_coef > 0)``) it also logs ``train/kl_to_reference``, the
    penalty's KL over the previous update. SB3 itself logs episode return and success rate (from
    Monitor and ``info["is_success"]``) and PPO's approx KL; everything reaches TensorBoard through
    the same logger.

    In a data-parallel run (:mod:`vlm_policy.distributed`) every process calls it at each rollout's end:
    the rollout's episodes of all processes are pooled (the curve's point, its env-step count, and the
    episodes SB3's ``rollout/ep_rew_mean`` and ``success_rate`` average over on rank 0); only the
    process given a ``curve_path`` (rank 0) writes.
    """

    def __init__(self, curve_path: str | Path | None = None, verbose: int = 0, pool_processes: bool = False) -> None:
        super().__init__(verbose)
        self.curve_path = Path(curve_path) if curve_path else None
        self.pool_processes = pool_processes
        self._valid = 0
        self._steps = 0
        self._successes: list[float] = []
        self._returns: list[float] = []
        self._episodes: list[dict] = []
        self._sample = ""

    def _on_rollout_start(self) -> None:
        self._valid = self._steps = 0
        self._successes, self._returns, self._episodes = [], [], []

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"]):
            self._steps += 1
            self._valid += bool(info.get("action_is_valid", True))
            if info.get("generated_text"):
                self._sample = info["generated_text"]
            if done:
                self._successes.append(float(info.get("is_success", False)))
                if "episode" in info:
                    self._returns.append(float(info["episode"]["r"]))
                    self._episodes.append({key: float(value) for key, value in info["episode"].items()})
        return True

    def _pool(self) -> int:
        """Adds the other processes' episodes of this rollout; returns the env steps of all processes."""
        from vlm_policy.distributed import current, gather_objects

        context = current()
        if not (self.pool_processes and context.enabled):
            return int(self.num_timesteps)
        mine = (self._valid, self._steps, self._successes, self._returns, self._episodes)
        everyone = gather_objects(mine)
        self._valid, self._steps = sum(e[0] for e in everyone), sum(e[1] for e in everyone)
        self._successes = [x for e in everyone for x in e[2]]
        self._returns = [x for e in everyone for x in e[3]]
        for rank, (_, _, successes, _, episodes) in enumerate(everyone):
            if rank != context.rank:  # SB3's own buffers already hold this process's episodes
                self.model.ep_info_buffer.extend(episodes)
                self.model.ep_success_buffer.extend(bool(x) for x in successes)
        return int(self.num_timesteps) * context.world_size

    def _on_rollout_end(self) -> None:
        timesteps = self._pool()
        invalid_rate = 1.0 - self._valid / max(self._steps, 1)
        self.logger.record("rollout/invalid_action_rate", invalid_rate)
        self.logger.record("rollout/sample_answer", self._sample)
        self._record_reference_kl()
        if self.curve_path is None:
            return
        point = {
            "timesteps": timesteps,
            "success_rate": float(np.mean(self._successes)) if self._successes else None,
            "episodes": len(self._successes),
            "mean_return": float(np.mean(self._returns)) if self._returns else None,
            "invalid_rate": invalid_rate,
        }
        with self.curve_path.open("a") as handle:
            handle.write(json.dumps(point) + "\n")

    def _on_training_end(self) -> None:
        # SB3 leaves the last update's train/* values undumped in the logger; the KL joins them.
        self._record_reference_kl()

    def _record_reference_kl(self) -> None:
        """The KL penalty's estimate over the last update's minibatches (VLMPolicy with kl_coef > 0)."""
        reference = getattr(self.model.policy, "kl_reference", None)
        history = reference.recent_kl if reference is not None else None
        if history:
            self.logger.record("train/kl_to_reference", float(np.mean(history)))
            history.clear()


_CHECKPOINT_NAME = re.compile(r"(?P<prefix>.+)_(?P<steps>\d+)_steps\.zip")


class HyperparameterLogger(BaseCallback):
    """Writes the run's settings to TensorBoard's HParams tab once training starts (SB3's ``HParam``), with the
    rollout's mean reward and the value loss as the metrics it shows beside them."""

    def __init__(self, settings: dict, verbose: int = 0) -> None:
        super().__init__(verbose)
        # TensorBoard takes numbers, strings and booleans; lists and None are written as text.
        self.settings = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
                         for key, value in settings.items()}

    def _on_training_start(self) -> None:
        from stable_baselines3.common.logger import HParam

        metrics = {"rollout/ep_rew_mean": 0.0, "train/value_loss": 0.0}
        self.logger.record("hparams", HParam(self.settings, metrics), exclude=("stdout", "log", "json", "csv"))

    def _on_step(self) -> bool:
        return True


def checkpoint_steps(path: str | Path) -> int:
    """The env steps in a checkpoint's name (``<prefix>_<steps>_steps.zip``)."""
    return int(_CHECKPOINT_NAME.fullmatch(Path(path).name).group("steps"))


def saved_checkpoints(directory: str | Path, name_prefix: str = "rl_model") -> list[Path]:
    """SB3 checkpoints (``<prefix>_<steps>_steps.zip``) in ``directory``, oldest first by timesteps."""
    found = [(int(m.group("steps")), path) for path in Path(directory).glob(f"{name_prefix}_*_steps.zip")
             if (m := _CHECKPOINT_NAME.fullmatch(path.name)) and m.group("prefix") == name_prefix]
    return [path for _, path in sorted(found)]


def keep_points_up_to(path: str | Path, timesteps: int) -> None:
    """Drops the lines of a JSON-lines record (``curve.jsonl``, ``validation.jsonl``) past ``timesteps``:
    a run resumed from a checkpoint makes them again."""
    from vlm_policy.checkpoints import atomic_write_text

    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _point_steps(line) <= timesteps]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _point_steps(line: str) -> float:
    try:
        return int(json.loads(line)["timesteps"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a line torn by a kill goes with the rest


class UpdateCheckpointCallback(BaseCallback):
    """Saves the agent after every ``every`` PPO updates, keeping the newest ``keep`` it wrote.

    SB3's ``CheckpointCallback`` saves at a rollout's last env step, before PPO trains on that
    rollout, so a run resumed from it redoes that rollout's env steps without its update (a resumed
    96-step run made 5 updates where 6 were due). Here a checkpoint is written when the next rollout
    starts and when training ends, that is after the update: resuming from ``rl_model_<n>_steps.zip``
    continues with every update of the first ``n`` env steps made. Each file is written atomically
    (a killed save leaves no torn checkpoint), and only files this callback wrote are rotated
    (leftovers of another run in the folder are never mistaken for its own). ``keep=0`` keeps all.

    In a data-parallel run a file is named by the env steps of all processes (``steps_scale``: the
    number of processes), which is what ``--ppo-timesteps`` counts.
    """

    def __init__(self, save_path: str | Path, keep: int = 3, every: int = 1, name_prefix: str = "rl_model",
                 verbose: int = 0, steps_scale: int = 1) -> None:
        if keep < 0:
            raise ValueError(f"keep must be >= 0 (0 keeps every checkpoint), got {keep}")
        if every < 1:
            raise ValueError(f"every must be >= 1 update, got {every}")
        super().__init__(verbose)
        self.save_path = Path(save_path)
        self.keep = keep
        self.every = every
        self.name_prefix = name_prefix
        self.steps_scale = steps_scale
        self.written: list[Path] = []
        self._rollouts = 0

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        # The first rollout of a learn() call follows no update of this call.
        if self._rollouts and self._rollouts % self.every == 0:
            self._save()
        self._rollouts += 1

    def _on_training_end(self) -> None:
        if self._rollouts:
            self._save()

    def _save(self) -> None:
        from vlm_policy.checkpoints import atomic_path

        path = self.save_path / f"{self.name_prefix}_{self.num_timesteps * self.steps_scale}_steps.zip"
        if path in self.written:
            return
        with atomic_path(path) as temporary:
            self.model.save(temporary)  # SB3 appends ".zip" to a name without it; ours has one
        self.written.append(path)
        if self.keep:
            for old in self.written[: -self.keep]:
                old.unlink(missing_ok=True)
            self.written = self.written[-self.keep:]


class GreedyValidationCallback(EventCallback):
    """Plays the validation episodes greedily every ``every`` PPO updates, as SB3's ``EvalCallback`` does.

    PPO's curve counts *sampled* episodes, while the agent is judged on greedy answers, and the two can
    part: a state whose sampled answers escape after a step or two can still trap greedy play, and a
    late update can undo an earlier one's greedy gain. So the agent PPO starts from (the SFT model), the
    agent after every ``every``-th update and the last one are played greedily by ``check(policy) ->
    success rate`` on episodes apart from the test seeds; each result is appended to ``record_path``
    (JSON lines ``{"timesteps", "success_rate"}``), logged as ``validation/success_rate``, and handed to
    ``callback_after_check`` (:class:`KeepBestAgent`, :class:`StopOnValidationSuccess`, or a
    ``CallbackList`` of both), which reads it as :attr:`last_check` and may stop training.

    A resumed run reads the checks already made from ``record_path`` up to the checkpoint it resumes
    from (those after it are made again, with the updates). Only the process given the path (rank 0)
    plays; on the others :attr:`last_check` is None, and they go on and wait at their next collective step.

    :param check: greedy success of a policy on the validation episodes (the policy is put in eval
        mode for it and set back after); every global random state is restored after it, so the checks
        never change PPO's own draws.
    :param every: PPO updates between two checks (the last update is always checked).
    :param steps_scale: the number of processes (checks are named by every process's env steps).
    """

    def __init__(self, check, record_path: str | Path | None, every: int = 1, steps_scale: int = 1,
                 callback_after_check: BaseCallback | None = None, verbose: int = 0) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 update, got {every}")
        super().__init__(callback_after_check, verbose)
        self.check = check
        self.record_path = Path(record_path) if record_path else None
        self.every = every
        self.steps_scale = steps_scale
        self.checks: list[dict] = read_validation(self.record_path) if self.record_path else []
        #: The check just made (None on a process that plays none), and whether it was played now (False: read
        #: from the record of the run this one resumes).
        self.last_check: dict | None = None
        self.last_check_is_new = False
        #: The check PPO stopped on (None while it goes on).
        self.stopped_at: dict | None = None
        #: True for the check after the last update (a stop then changes nothing).
        self.training_over = False
        self._rollouts = 0

    def _on_step(self) -> bool:
        return self.stopped_at is None

    def _steps(self) -> int:
        return int(self.model.num_timesteps) * self.steps_scale

    def _updates_made(self) -> int:
        """PPO updates so far, counted from the env steps (so a resumed run counts the interrupted one's)."""
        return int(self.model.num_timesteps) // (self.model.n_steps * self.model.n_envs)

    def _on_training_start(self) -> None:
        steps = self._steps()
        if self.record_path is not None and any(c["timesteps"] > steps for c in self.checks):
            # Resumed from an earlier checkpoint: the updates after it are made again, and so are their checks.
            keep_points_up_to(self.record_path, steps)
            self.checks = [c for c in self.checks if c["timesteps"] <= steps]
        # The agent PPO starts from; a resumed run only where the uninterrupted run checks (a resumed run
        # checked it already then), so that both make the same checks.
        if self._updates_made() % self.every == 0:
            self._check()

    def _on_rollout_start(self) -> None:
        # The first rollout of a learn() call follows no update of this call.
        if self._rollouts and self._updates_made() % self.every == 0:
            self._check()
        self._rollouts += 1

    def _on_training_end(self) -> None:
        if self.stopped_at is None:  # a stop leaves the agent of its check: nothing new to play
            self.training_over = True
            self._check()

    def _check(self) -> None:
        self.last_check = self._check_once()
        if self.callback is not None and not self._on_event():
            self.stopped_at = self.last_check

    def _check_once(self) -> dict | None:
        """Plays the check of this step count unless it is recorded already (a resumed run); returns that check
        (None where this process plays no checks)."""
        steps = self._steps()
        self.last_check_is_new = False
        if self.record_path is None:
            return None
        recorded = next((c for c in self.checks if c["timesteps"] == steps), None)
        if recorded is not None:
            return recorded
        from vlm_policy.training.evaluation import global_rngs_restored

        policy = self.model.policy
        was_training = policy.training
        # One process plays the check: its forwards must not wait for the others' NaN verdicts.
        agreed = getattr(policy, "agree_across_processes", False)
        with global_rngs_restored():
            try:
                policy.set_training_mode(False)
                policy.agree_across_processes = False
                success = float(self.check(policy))
            finally:
                policy.agree_across_processes = agreed
                policy.set_training_mode(was_training)
        point = {"timesteps": steps, "success_rate": success}
        self.checks.append(point)
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        with self.record_path.open("a") as handle:
            handle.write(json.dumps(point) + "\n")
        self._log_check(point)
        self.last_check_is_new = True
        return point

    def _log_check(self, point: dict) -> None:
        """The check in the next logger dump (stdout, CSV) and in TensorBoard at its own step count: a
        dump comes one rollout later, and none at all after the last check."""
        from stable_baselines3.common.logger import TensorBoardOutputFormat

        key = "validation/success_rate"
        self.logger.record(key, point["success_rate"], exclude="tensorboard")
        for output in self.logger.output_formats:
            if isinstance(output, TensorBoardOutputFormat):
                output.write({key: point["success_rate"]}, {key: None}, step=point["timesteps"])
                output.writer.flush()


class KeepBestAgent(BaseCallback):
    """After each :class:`GreedyValidationCallback` check: keeps the agent if it scores better than the one
    kept in ``best_dir``, as ``best_dir/agent.zip`` with its check in ``best_dir/check.json``, the folder
    written atomically so that the two always belong together. A tie keeps the earlier agent, the one closer
    to the SFT start: a check wins a few dozen episodes, and on a task whose outcomes are mostly luck
    (Blackjack) an equal score says nothing for the later one, so the start stays the agent handed over
    until PPO beats it.
    A resumed run keeps the folder: an agent of the interrupted attempt stays a candidate, with its own check.
    """

    def __init__(self, best_dir: str | Path, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.best_dir = Path(best_dir)

    def _on_step(self) -> bool:
        point = self.parent.last_check
        if point is None or not self.parent.last_check_is_new:  # a recorded check was weighed when it was made
            return True
        kept = kept_best(self.best_dir)
        if kept is None or point["success_rate"] > kept["success_rate"]:
            from vlm_policy.checkpoints import atomic_path

            with atomic_path(self.best_dir) as temporary:
                temporary.mkdir()
                self.model.save(temporary / BEST_AGENT_FILE)
                (temporary / BEST_CHECK_FILE).write_text(json.dumps(point))
        return True


class StopOnValidationSuccess(BaseCallback):
    """After each :class:`GreedyValidationCallback` check: stops PPO once greedy answers win at least
    ``threshold`` of the validation episodes, as SB3's ``StopTrainingOnRewardThreshold`` does for
    ``EvalCallback``: a check that wins every validation episode cannot be beaten, and the env steps after
    it only risk the greedy gain. Training stops at the next rollout's first env step (SB3 stops on a
    callback's step), so the last update stays the checked one; in a data-parallel run rank 0's verdict is
    broadcast, so every process stops at the same step.
    """

    def __init__(self, threshold: float, verbose: int = 0) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"the stop's success rate must be between 0 and 1, above 0 (for no stop leave the callback "
                             f"out), got {threshold}")
        super().__init__(verbose)
        self.threshold = threshold

    def _on_step(self) -> bool:
        if self.parent.training_over:
            return True
        from vlm_policy import distributed

        point = self.parent.last_check
        verdict = point if point is not None and point["success_rate"] >= self.threshold else None
        stop = distributed.broadcast_object(verdict)  # rank 0 alone plays the checks
        if stop is not None and point is None:
            self.parent.last_check = stop  # the other processes stop on rank 0's check
        elif stop is not None:
            print(f"PPO stops at {stop['timesteps']} env steps: greedy answers win {stop['success_rate']:.1%} of the "
                  f"validation episodes (>= --ppo-stop-success {self.threshold})", flush=True)
        return stop is None


#: What :class:`GreedyValidationCallback` keeps in its ``best_dir``.
BEST_AGENT_FILE = "agent.zip"
BEST_CHECK_FILE = "check.json"
#: Where the main job keeps PPO's checks and the best check's agent, relative to its ``--out-dir``.
VALIDATION_RECORD = Path("ppo") / "validation.jsonl"
BEST_AGENT_DIR = Path("ppo") / "best"


def read_json_lines(path: str | Path, keys: dict[str, type]) -> list[dict]:
    """The lines of a JSON-lines file appended to as training goes, in order, each with ``keys`` converted
    by their types; a line torn by a kill (or missing a key) is skipped, and a missing file reads empty."""
    path = Path(path)
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            point = json.loads(line)
            rows.append({**point, **{key: kind(point[key]) for key, kind in keys.items()}})
        except (ValueError, KeyError, TypeError):
            continue
    return rows


def read_validation(path: str | Path) -> list[dict]:
    """The greedy validation checks recorded in ``path`` (JSON lines), in order; a line torn by a kill is skipped."""
    return [{"timesteps": c["timesteps"], "success_rate": c["success_rate"]}
            for c in read_json_lines(path, {"timesteps": int, "success_rate": float})]


def kept_best(best_dir: str | Path) -> dict | None:
    """The check of the agent kept in ``best_dir`` (``{"timesteps", "success_rate"}``), or None when
    there is none (both files are written together, atomically)."""
    folder = Path(best_dir)
    try:
        point = json.loads((folder / BEST_CHECK_FILE).read_text())
        found = {"timesteps": int(point["timesteps"]), "success_rate": float(point["success_rate"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if (folder / BEST_AGENT_FILE).is_file() else None
