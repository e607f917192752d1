"""The settings of every command, as focused dataclasses parsed together into one CLI.

Each setting is named once, with one default, whichever command reads it: ``vlm-cards train`` parses
the groups of :data:`TRAIN_GROUPS` (common, task, model, SFT, relabelling, PPO, evaluation, run), one per
stage where a stage has settings of its own, into :class:`TrainConfig`, which holds one of each
(``config.ppo.n_epochs``) and resolves the rules that read the task or the model once; ``vlm-cards sft``
parses the common, model and SFT groups. The stage records (``stage_records.py``) take each stage's
settings from its group.
Values are checked in ``__post_init__`` with a message that names the flag. The defaults are the embedded
tiny model's on the CPU (how they were chosen: ``docs/results.md``); the paper's 7B settings are in
``examples/``.

A group's ``advanced_settings`` are left out of ``--help`` (``--help-all`` and docs/cli.md show them) and
are set the same way as the others, on the command line or in a ``--config`` file. Its ``auto_settings``
have a rule for a default (stated in the help) and take the word ``auto`` for it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

from gym_vlm_cards.registration import FALLBACK_STEP_LIMIT, registered_step_limit, resolve_env_id
from vlm_policy import defaults
from vlm_policy.loading import TINY, is_tiny

#: The first seed of the validation episodes SFT's stop checks use (the test seeds start at 100,000).
VALIDATION_SEED = 200_000
#: The main job's ``--sft-stop-reach`` (its -1 default resolved; docs/results.md has why).
DEFAULT_STOP_REACH = 0.7

#: The probability from which an answer counts as within reach of PPO's sampling.
REACH_PROBABILITY = 0.01

#: ALFWorld's standard evaluation splits (seen and unseen rooms).
ALFWORLD_EVAL_SPLITS = ("valid_seen", "valid_unseen")


def is_alfworld(env_id: str) -> bool:
    return env_id.startswith("alfworld/")


def step_limit_for(env_id: str, max_episode_steps: int = 0) -> dict[str, int]:
    """``gym.make``'s step-limit argument: ``max_episode_steps`` when set; nothing for a task registered with
    a limit; for one registered without, :data:`FALLBACK_STEP_LIMIT` and a warning saying so."""
    if max_episode_steps:
        return {"max_episode_steps": max_episode_steps}
    if registered_step_limit(env_id) is not None:
        return {}
    return {"max_episode_steps": step_limit_rule(env_id)}


def step_limit_rule(env_id: str, warn: bool = True) -> int:
    """``--max-episode-steps auto``: the task's registered limit, else :data:`FALLBACK_STEP_LIMIT` (with a warning
    when ``warn``)."""
    registered = registered_step_limit(env_id)
    if registered is not None:
        return registered
    if warn:
        warnings.warn(f"{env_id} is registered without max_episode_steps: its episodes end after {FALLBACK_STEP_LIMIT} "
                      "steps here (set --max-episode-steps, or register the task with one)", stacklevel=3)
    return FALLBACK_STEP_LIMIT


def env_kwargs_for(env_id: str, data_root: str = "", split: str = "") -> dict[str, Any]:
    """For ALFWorld, ``data_root`` (when set) and ``split`` (default 'train'); for other envs nothing, and an
    error if either is set."""
    if not is_alfworld(env_id):
        if data_root or split:
            raise ValueError(f"--data-root and --split are ALFWorld's; {env_id} takes neither")
        return {}
    kwargs: dict[str, Any] = {"split": split or "train"}
    if data_root:
        kwargs["data_root"] = data_root
    return kwargs


def memory_kwargs(env_id: str, history_length: int) -> dict[str, int]:
    """The env setting of the prompt's memory of the last ``history_length`` steps (``{}`` for none); an error
    for a negative length or a task other than ALFWorld."""
    if history_length < 0 or (history_length and not is_alfworld(env_id)):
        raise ValueError(f"--history-length is ALFWorld's and >= 0 (a card task shows its whole state in every "
                         f"frame), got {history_length} for {env_id}")
    return {"history_length": history_length} if history_length else {}


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(config: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
           unit_interval: tuple[str, ...] = ()) -> None:
    """Raises a ValueError naming the flag of the first value out of its range."""
    for name in positive:
        value = getattr(config, name)
        if value is None:  # resolved later (from the model: see vlm_policy.defaults)
            continue
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{_flag(name)} must be > 0, got {value}")
    for name in non_negative:
        value = getattr(config, name)
        if value is None:  # resolved later (from the model: see vlm_policy.defaults)
            continue
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{_flag(name)} must be >= 0, got {value}")
    for name in unit_interval:
        value = getattr(config, name)
        if not 0 <= value <= 1:
            raise ValueError(f"{_flag(name)} must be between 0 and 1, got {value}")


def auto_to_rules(config: Any) -> None:
    """Replaces the word ``auto`` in ``config``'s ``auto_settings`` by the field's default, which stands for the rule."""
    for item in fields(config):
        if item.name in getattr(config, "auto_settings", ()) and getattr(config, item.name) == "auto":
            setattr(config, item.name, item.default)


def check_device(device: str, flag: str = "--device") -> None:
    """'auto', 'cpu', 'cuda' or 'cuda:N', else a ValueError naming ``flag``."""
    kind, _, index = device.partition(":")
    if device != "auto" and not (kind == "cpu" and not index or kind == "cuda" and (not index or index.isdigit())):
        raise ValueError(f"{flag} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def warmup_steps_rule(model: str) -> int:
    """``--vision-warmup-steps auto``: only the tiny model's random vision tower needs a warm-up."""
    return 150 if is_tiny(model) else 0


def ppo_check_every_rule(env_id: str) -> int:
    """``--ppo-check-every auto``: every second update, none on ALFWorld (each check would load its games)."""
    return 0 if is_alfworld(env_id) else 2


def eval_batch_for(env_id: str, eval_batch: int) -> int:
    """Episodes an evaluation steps together: ``eval_batch``, or for -1 64 on the card tasks and 8 on ALFWorld
    (each of its envs holds a loaded game)."""
    if eval_batch == -1:
        return 8 if is_alfworld(env_id) else 64
    return eval_batch


def check_eval_batch(eval_batch: int, flag: str) -> None:
    if eval_batch < 1 and eval_batch != -1:
        raise ValueError(f"{flag} must be > 0 (or auto), got {eval_batch}")


@dataclass
class CommonConfig:
    """Settings every training command shares."""

    seed: int = field(default=0, metadata=_help("seeds demos, model init, PPO envs and sampling"))
    device: str = field(default="auto", metadata=_help("'auto' (CUDA when available), 'cpu' or 'cuda'"))
    progress: bool = field(default=True, metadata=_help("progress bars"))

    def __post_init__(self) -> None:
        self.validate_common()

    def validate_common(self) -> None:
        _check(self, non_negative=("seed",))
        check_device(self.device)


@dataclass
class ModelConfig:
    """Which model, in which precision, and how its activations are kept."""

    #: Left out of ``--help`` (see the module's docstring).
    advanced_settings: ClassVar[frozenset[str]] = frozenset({"gradient_checkpointing"})

    model: str = field(default=TINY, metadata=_help("'tiny' (the embedded model) or a checkpoint path / cache id"))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata=_help(
        "compute dtype (auto: bf16 on CUDA, fp32 on the CPU); optimised weights stay fp32"))
    gradient_checkpointing: Literal["auto", "on", "off"] = field(default="auto", metadata=_help(
        "recompute activations in the backward pass (auto: on for real checkpoints, off for tiny)"))
    micro_batch_size: int = field(default=0, metadata=_help(
        "answers per forward/backward chunk; peak memory follows it (0: whole batches)"))

    def __post_init__(self) -> None:
        self.validate_model()

    def validate_model(self) -> None:
        _check(self, non_negative=("micro_batch_size",))
        if not self.model:
            raise ValueError("--model must be 'tiny' or a checkpoint path, got an empty string")

    @property
    def micro_batch(self) -> int | None:
        return self.micro_batch_size or None

    def checkpointing_for(self, model: str) -> bool:
        """Whether ``model`` trains with gradient checkpointing."""
        setting = self.checkpointing_rule(model) if self.gradient_checkpointing == "auto" else self.gradient_checkpointing
        return setting == "on"

    @staticmethod
    def checkpointing_rule(model: str) -> str:
        """``--gradient-checkpointing auto``: on for real checkpoints, off for the tiny model (small activations)."""
        return "off" if is_tiny(model) else "on"


@dataclass
class SFTConfig:
    """Supervised fine-tuning on the demonstrations (and the tiny model's vision warm-up)."""

    #: Left out of ``--help`` (see the module's docstring).
    advanced_settings: ClassVar[frozenset[str]] = frozenset({
        "sft_batch_size", "sft_lora_r", "vision_warmup_steps", "sft_stop_success", "sft_check_every",
        "sft_check_episodes"})
    #: Defaults that are rules, written ``auto`` (see the module's docstring).
    auto_settings: ClassVar[frozenset[str]] = frozenset({
        "sft_learning_rate", "sft_lora_r", "vision_warmup_steps", "sft_stop_reach"})
    #: The stop checks' settings: they play validation episodes, which only the main job has.
    validation_settings: ClassVar[frozenset[str]] = frozenset({
        "sft_stop_success", "sft_stop_reach", "sft_check_every", "sft_check_episodes"})

    sft_steps: int = field(default=150, metadata=_help("SFT optimizer steps"))
    sft_batch_size: int = field(default=16, metadata=_help("examples per SFT step"))
    sft_learning_rate: float | None = field(default=None, metadata=_help(
        "SFT learning rate, cosine decay to a tenth (auto: 1e-3 for the tiny model, 2e-5 for a checkpoint)"))
    sft_lora_r: int | None = field(default=None, metadata=_help(
        f"SFT LoRA rank, 0 for every weight (auto: 0 for the tiny model, {defaults.CHECKPOINT_LORA_RANK} for a checkpoint)"))
    vision_warmup_steps: int = field(default=-1, metadata=_help(
        "steps teaching a random vision tower the demos' states before SFT (auto: 150 tiny, 0 checkpoints)"))
    sft_stop_success: float = field(default=0.0, metadata=_help(
        "stop SFT once greedy answers win this share of the validation episodes (0: never)"))
    sft_stop_reach: float = field(default=-1.0, metadata=_help(
        "stop SFT once the oracle's answer is within sampling's reach on this share of frames (auto: 0.7, off on ALFWorld)"))
    sft_check_every: int = field(default=10, metadata=_help("SFT steps between two stop checks"))
    sft_check_episodes: int = field(default=64, metadata=_help(
        "validation episodes per SFT stop check (seeds from 200,000)"))

    def __post_init__(self) -> None:
        auto_to_rules(self)
        self.validate_sft()

    def validate_sft(self) -> None:
        _check(self, positive=("sft_steps", "sft_batch_size", "sft_learning_rate", "sft_check_every",
                               "sft_check_episodes"),
               non_negative=("sft_lora_r",), unit_interval=("sft_stop_success",))
        if self.sft_stop_reach != -1 and not 0 <= self.sft_stop_reach <= 1:
            raise ValueError(f"--sft-stop-reach must be between 0 and 1 (or auto), got {self.sft_stop_reach}")
        if self.vision_warmup_steps < -1:
            raise ValueError(f"--vision-warmup-steps must be >= 0 (or auto), got {self.vision_warmup_steps}")

    def stop_reach(self) -> float:
        """``--sft-stop-reach``, its rule (-1) read as off: SFT alone has no validation episodes (the main job's
        :class:`TrainConfig` resolves it)."""
        return max(self.sft_stop_reach, 0.0)

    def stop_targets(self) -> dict[str, float]:
        """The validation measures SFT stops on, with their targets (empty: SFT makes every step)."""
        return {name: target for name, target in (("success", self.sft_stop_success), ("reach", self.stop_reach()))
                if target > 0}

    def warmup_steps_for(self, model: str) -> int:
        """The warm-up's steps for ``model``: only the tiny model's random vision tower needs one."""
        return warmup_steps_rule(model) if self.vision_warmup_steps == -1 else self.vision_warmup_steps


def whole_rollouts(budget: int, rollout: int) -> int:
    """The env steps SB3 makes for a budget of ``budget``: it finishes the rollout of ``rollout`` steps it is in."""
    return -(-budget // rollout) * rollout


@dataclass
class PPOConfig:
    """PPO through SB3 (the paper's values where they carry over; the learning rate is the tiny model's)."""

    #: Left out of ``--help`` (see the module's docstring).
    advanced_settings: ClassVar[frozenset[str]] = frozenset({
        "learning_rate_end", "clip_range", "target_kl", "gamma", "gae_lambda", "max_grad_norm", "ent_coef",
        "vf_coef", "value_lr_scale", "value_gradients_to_model", "constrain_actions", "ppo_check_every",
        "ppo_check_episodes", "ppo_keep_best", "keep_checkpoints"})
    #: Defaults that are rules, written ``auto`` (see the module's docstring).
    auto_settings: ClassVar[frozenset[str]] = frozenset({
        "learning_rate", "learning_rate_end", "lora_r", "ppo_check_every", "constrain_actions"})

    ppo_timesteps: int = field(default=8192, metadata=_help(
        "env steps of PPO at the most: --ppo-stop-success usually ends it earlier (paper: 15,000)"))
    n_envs: int = field(default=8, metadata=_help("parallel envs (one batched generate per step)"))
    n_steps: int = field(default=32, metadata=_help("rollout steps per env per update"))
    batch_size: int = field(default=32, metadata=_help("PPO minibatch size"))
    n_epochs: int = field(default=4, metadata=_help(
        "PPO epochs per update, at most: --target-kl stops an update earlier (paper: 4)"))
    learning_rate: float | None = field(default=None, metadata=_help(
        "PPO learning rate at the start (auto: 2.5e-5 for the tiny model, 1e-5 for a checkpoint)"))
    learning_rate_end: float | None = field(default=None, metadata=_help(
        "final learning rate of a cosine from --learning-rate (auto: constant at --learning-rate)"))
    clip_range: float = field(default=0.2, metadata=_help("PPO clip (paper: 0.1)"))
    target_kl: float = field(default=0.1, metadata=_help(
        "stop an update's epochs past this approx KL (0: never)"))
    gamma: float = field(default=0.9, metadata=_help("discount (paper: 0.9)"))
    gae_lambda: float = field(default=0.95, metadata=_help("GAE lambda (paper: 0.95)"))
    max_grad_norm: float = field(default=0.5, metadata=_help("gradient clip (paper: 0.01 for 7B)"))
    ent_coef: float = field(default=0.0, metadata=_help("entropy bonus"))
    vf_coef: float = field(default=0.5, metadata=_help("value loss weight"))
    temperature: float = field(default=defaults.TEMPERATURE, metadata=_help("sampling temperature during PPO (paper: 0.2)"))
    cot_weight: float = field(default=defaults.COT_WEIGHT, metadata=_help("lambda: weight of the thought tokens' log-prob"))
    lora_r: int | None = field(default=None, metadata=_help(
        f"PPO LoRA rank, 0 for every weight (auto: 0 for the tiny model, {defaults.CHECKPOINT_LORA_RANK} for a checkpoint)"))
    train_vision: bool = field(default=defaults.TRAIN_VISION, metadata=_help("let PPO update the vision tower too"))
    value_lr_scale: float = field(default=defaults.VALUE_LR_SCALE, metadata=_help(
        "value head learning-rate multiplier"))
    kl_coef: float = field(default=defaults.KL_COEF, metadata=_help(
        "weight of the KL penalty towards the SFT checkpoint (0: none, as in the paper)"))
    value_gradients_to_model: bool = field(default=defaults.VALUE_GRADIENTS_TO_MODEL, metadata=_help(
        "let the value loss train the VLM too (the paper's shared trunk)"))
    constrain_actions: bool | None = field(default=None, metadata=_help(
        "legal-action decoding: an answer's action value names one of the state's legal actions (auto: on for ALFWorld)"))
    ppo_check_every: int = field(default=-1, metadata=_help(
        "PPO updates between greedy validation checks (0: none; auto: 2, none on ALFWorld)"))
    ppo_check_episodes: int = field(default=64, metadata=_help("validation episodes per PPO check"))
    ppo_stop_success: float = field(default=1.0, metadata=_help(
        "stop PPO at a check whose greedy answers win this share of validation (0: never)"))
    ppo_keep_best: bool = field(default=True, metadata=_help(
        "hand over the best check's agent (ppo/best/) instead of the last update's"))
    keep_checkpoints: int = field(default=3, metadata=_help(
        "PPO checkpoints kept for --resume, the newest (0: all; each is ~40 MB for the tiny model)"))

    def __post_init__(self) -> None:
        auto_to_rules(self)
        self.validate_ppo()

    def validate_ppo(self) -> None:
        if self.learning_rate_end is None:  # resolved here, so that records and config.json hold the rate used
            self.learning_rate_end = self.learning_rate  # (still None while the rate waits for the model)
        _check(self, positive=("ppo_timesteps", "n_envs", "n_steps", "batch_size", "n_epochs", "learning_rate",
                               "clip_range", "max_grad_norm"),
               non_negative=("learning_rate_end", "target_kl", "ent_coef", "vf_coef", "temperature",
                             "cot_weight",
                             "lora_r", "value_lr_scale", "kl_coef", "keep_checkpoints"),
               unit_interval=("gamma", "gae_lambda", "ppo_stop_success"))
        if self.ppo_check_every < -1:
            raise ValueError(f"--ppo-check-every must be >= 0 (or auto), got {self.ppo_check_every}")
        if self.ppo_check_episodes < 1:
            raise ValueError(f"--ppo-check-episodes must be at least 1, got {self.ppo_check_episodes}")
        rollout = self.n_envs * self.n_steps
        if self.batch_size > rollout:
            raise ValueError(f"--batch-size {self.batch_size} is larger than a rollout "
                             f"(--n-envs x --n-steps = {rollout})")
        made = whole_rollouts(self.ppo_timesteps, rollout)
        if made != self.ppo_timesteps:
            warnings.warn(f"--ppo-timesteps {self.ppo_timesteps} is not a whole number of rollouts (--n-envs x --n-steps "
                          f"= {rollout} env steps each): PPO makes {made} env steps", stacklevel=1)


@dataclass
class TaskConfig:
    """The task, its prompts and the oracle's demonstrations of it."""

    #: Left out of ``--help`` (see the module's docstring).
    advanced_settings: ClassVar[frozenset[str]] = frozenset({"history_length"})
    #: Defaults that are rules, written ``auto`` (see the module's docstring).
    auto_settings: ClassVar[frozenset[str]] = frozenset({"max_episode_steps"})
    #: ALFWorld's own settings: recorded for ALFWorld runs only.
    alfworld_settings: ClassVar[frozenset[str]] = frozenset({"data_root", "split", "history_length"})

    env_id: str = field(default="gym_cards/NumberLine-v0", metadata=_help("task to learn", aliases=["--env"]))
    prompt_style: Literal["cot", "action_only"] = field(default="cot", metadata=_help(
        "'cot' (thoughts then action) or 'action_only'"))
    demos: int = field(default=400, metadata=_help("oracle steps recorded for SFT"))
    data_root: str = field(default="", metadata=_help(
        "ALFWorld data folder (empty: $ALFWORLD_DATA, else ~/.cache/alfworld)"))
    split: str = field(default="", metadata=_help(
        "ALFWorld split that demonstrations and PPO play (empty: train)"))
    max_episode_steps: int = field(default=0, metadata=_help(
        "step limit of every episode (auto: the task's registered limit, else 50)"))
    history_length: int = field(default=0, metadata=_help(
        "ALFWorld: the last k observations and commands in the prompt, a memory of the episode (0: none)"))

    def __post_init__(self) -> None:
        auto_to_rules(self)
        self.validate_task()

    def validate_task(self) -> None:
        self.env_id = resolve_env_id(self.env_id)
        _check(self, positive=("demos",), non_negative=("max_episode_steps",))
        memory_kwargs(self.env_id, self.history_length)
        self.max_episode_steps = self.max_episode_steps or step_limit_rule(self.env_id)
        env_kwargs_for(self.env_id, self.data_root, self.split)  # --data-root / --split only for ALFWorld
        if self.split and is_alfworld(self.env_id):
            check_alfworld_splits([self.split])

    def env_kwargs(self, split: str | None = None) -> dict[str, Any]:
        """``gym.make``'s arguments besides the frame size: :meth:`play_kwargs`; for ALFWorld the data folder
        and a split (``split``, else the training one)."""
        kwargs = env_kwargs_for(self.env_id, self.data_root, split or self.split)
        return {**kwargs, **self.play_kwargs()}

    def play_kwargs(self) -> dict[str, Any]:
        """What every env of the run takes, whichever games it plays: the step limit, and the prompt's memory of
        earlier steps when there is one (evaluations see the prompts training saw)."""
        return {"max_episode_steps": self.max_episode_steps,
                **memory_kwargs(self.env_id, self.history_length)}


def check_alfworld_splits(splits: list[str]) -> None:
    from alfworld_bridge.games import SPLITS

    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"ALFWorld splits are {SPLITS}, got {split!r}")


@dataclass
class RelabelConfig:
    """DAgger after SFT: the model plays, the expert labels the states it reaches, SFT goes on over all."""

    #: Left out of ``--help`` (see the module's docstring).
    advanced_settings: ClassVar[frozenset[str]] = frozenset({"relabel_rounds", "relabel_episodes"})

    relabel_rounds: int = field(default=0, metadata=_help("DAgger rounds after SFT (0: none)"))
    relabel_episodes: int = field(default=32, metadata=_help("training episodes the model plays per DAgger round"))

    def __post_init__(self) -> None:
        self.validate_relabel()

    def validate_relabel(self) -> None:
        _check(self, positive=("relabel_episodes",), non_negative=("relabel_rounds",))


@dataclass
class EvaluationConfig:
    """The held-out evaluations after SFT and after PPO."""

    #: Left out of ``--help`` (see the module's docstring).
    advanced_settings: ClassVar[frozenset[str]] = frozenset({"eval_seed", "eval_splits"})
    #: Defaults that are rules, written ``auto`` (see the module's docstring).
    auto_settings: ClassVar[frozenset[str]] = frozenset({"eval_batch"})
    #: ALFWorld's own settings: recorded for ALFWorld runs only.
    alfworld_settings: ClassVar[frozenset[str]] = frozenset({"eval_splits"})

    eval_episodes: int = field(default=200, metadata=_help(
        "held-out episodes for the before/after table (ALFWorld: games of each split, the first n)"))
    eval_seed: int = field(default=100_000, metadata=_help("first held-out seed (far from training seeds)"))
    eval_batch: int = field(default=-1, metadata=_help(
        "episodes an evaluation plays at once; lower it if memory runs out (auto: 64, 8 on ALFWorld)"))
    eval_splits: list[str] = field(default_factory=lambda: list(ALFWORLD_EVAL_SPLITS), metadata=_help(
        "ALFWorld: the splits evaluated after SFT and after PPO"))

    def __post_init__(self) -> None:
        auto_to_rules(self)
        self.validate_evaluation()

    def validate_evaluation(self) -> None:
        _check(self, positive=("eval_episodes",), non_negative=("eval_seed",))
        check_eval_batch(self.eval_batch, "--eval-batch")
        self.eval_splits = list(self.eval_splits)
        if not self.eval_splits:
            raise ValueError("--eval-splits needs at least one split")


@dataclass
class RunConfig:
    """Where the main job writes, and how long its answers may be."""

    #: Left out of ``--help`` (see the module's docstring).
    advanced_settings: ClassVar[frozenset[str]] = frozenset({"max_new_tokens"})
    #: Defaults that are rules, written ``auto`` (see the module's docstring).
    auto_settings: ClassVar[frozenset[str]] = frozenset({"max_new_tokens"})

    out_dir: str = field(default="runs/numberline", metadata=_help("where every stage writes"))
    max_new_tokens: int = field(default=0, metadata=_help(
        "longest answer in tokens (auto: the longest demonstration's, at least 40; paper: 256)"))

    def __post_init__(self) -> None:
        auto_to_rules(self)
        self.validate_run()

    def validate_run(self) -> None:
        _check(self, non_negative=("max_new_tokens",))


def flat_settings(values: dict[str, Any], groups: Any) -> dict[str, Any]:
    """``values`` with each section named after one of ``groups`` (``{"ppo": {"n_epochs": 2}}``, as in a run's
    ``config.json``) opened into its settings; other keys stay as they are."""
    flat = {key: value for key, value in values.items() if key not in groups or not isinstance(value, dict)}
    for key in groups:
        if isinstance(values.get(key), dict):
            flat.update(values[key])
    return flat


@dataclass
class TrainConfig:
    """Every setting of ``vlm-cards train``, one group per stage (``config.ppo.learning_rate``), resolved.

    Made, it applies every rule that depends on the task or the model once (:meth:`resolve`): what it then
    holds is what the stages read, what they record and what ``config.json`` holds, no ``auto`` left but the
    machine's (``device``, ``dtype``) and the answer length, which the demonstrations measure (the run fills
    it in once they exist). :meth:`from_settings` makes one from flat settings, as the command line gives.
    """

    common: CommonConfig = field(default_factory=CommonConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        self.resolve()

    def resolve(self) -> None:
        """Applies the rules that read the task and the model (the ones :class:`VLMPolicy` and ``vlm-cards sft``
        apply too, from :mod:`vlm_policy.defaults`), then checks what spans groups."""
        env_id, model = self.task.env_id, self.model.model
        sft, ppo, evaluation = self.sft, self.ppo, self.evaluation
        sft_rate, ppo_rate = defaults.learning_rates_for(model)
        if sft.sft_learning_rate is None:
            sft.sft_learning_rate = sft_rate
        if ppo.learning_rate is None:
            ppo.learning_rate = ppo_rate
        if ppo.learning_rate_end is None:
            ppo.learning_rate_end = ppo.learning_rate
        ppo.lora_r = defaults.lora_rank_for(model, ppo.lora_r)
        sft.sft_lora_r = defaults.lora_rank_for(model, sft.sft_lora_r)
        sft.vision_warmup_steps = sft.warmup_steps_for(model)
        if sft.sft_stop_reach == -1:  # off on ALFWorld: each validation episode would load a game
            sft.sft_stop_reach = 0.0 if is_alfworld(env_id) else DEFAULT_STOP_REACH
        if ppo.constrain_actions is None:
            ppo.constrain_actions = defaults.constrain_actions_for(env_id)
        if ppo.ppo_check_every == -1:
            ppo.ppo_check_every = ppo_check_every_rule(env_id)
        evaluation.eval_batch = eval_batch_for(env_id, evaluation.eval_batch)
        if self.model.gradient_checkpointing == "auto":
            self.model.gradient_checkpointing = ModelConfig.checkpointing_rule(model)
        sft.validate_sft()
        ppo.validate_ppo()
        if is_alfworld(env_id):
            check_alfworld_splits(evaluation.eval_splits)
        validated = max(sft.sft_check_episodes if sft.stop_targets() else 0,
                        ppo.ppo_check_episodes if ppo.ppo_check_every else 0)
        if validated and (evaluation.eval_seed < VALIDATION_SEED + validated
                          and VALIDATION_SEED < evaluation.eval_seed + evaluation.eval_episodes):
            raise ValueError(f"the test episodes (--eval-seed {evaluation.eval_seed}, --eval-episodes "
                             f"{evaluation.eval_episodes}) overlap the validation seeds of the SFT and PPO checks "
                             f"({VALIDATION_SEED} onwards): test on other seeds: the held-out results would otherwise "
                             "be chosen on themselves")

    @classmethod
    def group_names(cls) -> dict[str, type]:
        """Each group's attribute and class, in ``vlm-cards train --help``'s order."""
        return {item.name: item.type if isinstance(item.type, type) else globals()[item.type] for item in fields(cls)}

    @classmethod
    def from_settings(cls, **settings: Any) -> TrainConfig:
        """The config of flat settings (``TrainConfig.from_settings(env_id=..., sft_steps=3)``), the others left
        to their defaults; an unknown name is a TypeError naming it."""
        groups = cls.group_names()
        unknown = sorted(set(settings) - {item.name for group in groups.values() for item in fields(group)})
        if unknown:
            raise TypeError(f"vlm-cards train has no settings {', '.join(unknown)}")
        return cls(**{name: group(**{item.name: settings[item.name] for item in fields(group) if item.name in settings})
                      for name, group in groups.items()})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config a ``config.json`` holds (groups of settings; flat settings, as earlier versions wrote, too)."""
        return cls.from_settings(**flat_settings(values, cls.group_names()))

    @classmethod
    def from_groups(cls, *groups: Any) -> TrainConfig:
        """The config of group instances (as the command line parses them), in any order."""
        return cls(**{name: given for name, group in cls.group_names().items()
                      for given in groups if isinstance(given, group)})

    def settings(self) -> dict[str, Any]:
        """Every setting by its own name, flat (each name belongs to one group)."""
        return {name: value for group in self.group_names() for name, value in asdict(getattr(self, group)).items()}

    def with_settings(self, **settings: Any) -> TrainConfig:
        """This config with ``settings`` changed (resolved again: a setting a rule gave is kept as given)."""
        return self.from_settings(**{**self.settings(), **settings})

    def to_dict(self) -> dict[str, Any]:
        """The groups and their settings, as ``config.json`` holds them."""
        return asdict(self)


#: The groups of ``vlm-cards train``, in its help's order; ``vlm-cards sft`` takes the common, model and SFT ones.
TRAIN_GROUPS = tuple(TrainConfig.group_names().values())
SFT_GROUPS = (CommonConfig, ModelConfig, SFTConfig)
