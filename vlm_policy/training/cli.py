"""``vlm-cards`` (also ``python -m vlm_policy``): the command line of the project.

    vlm-cards train --env gym_cards/NumberLine-v0 --model tiny     demonstrations -> SFT -> PPO -> table + plots
    vlm-cards sweep --seeds 0 1 2 --out-dir runs/sweep             the same per seed, a mean ± sd table, one plot
    vlm-cards eval --model runs/numberline/sft --env gym_cards/NumberLine-v0 --episodes 200 --seed 100000
    vlm-cards play --model runs/numberline/ppo/final.zip --env gym_cards/NumberLine-v0 --record play.gif
    vlm-cards demos --env gym_cards/EZPoints-v0 --n 1000 --out demos/ezpoints
    vlm-cards sft --data demos/ezpoints --out checkpoints/ezpoints-sft
    vlm-cards baseline --env gym_cards/NumberLine-v0 --timesteps 20000

ALFWorld takes the data folder and a split (``$ALFWORLD_DATA`` and ``train`` when not given):

    vlm-cards demos --env alfworld/ALFWorld-v0 --data-root data/alfworld --split valid_train --n 1200 --out demos/alf
    vlm-cards train --env alfworld/ALFWorld-v0 --data-root data/alfworld --split valid_train --eval-episodes 30
    vlm-cards eval --env alfworld/ALFWorld-v0 --data-root data/alfworld --split valid_unseen --model runs/alf/sft

The options of ``train`` and ``sft`` are generated from the dataclasses of
:mod:`vlm_policy.training.configs` (``vlm-cards train --help`` lists them all).

Bad input (a value out of range, a missing path, an unknown env id, a run folder in use or made with
other settings) ends a command with one line naming the cause and the fix, and exit status 2; set
``VLM_CARDS_TRACEBACK=1`` to see the traceback instead.

``train`` and ``sft`` run data-parallel when started by torchrun (see :mod:`vlm_policy.distributed`):

    torchrun --nproc-per-node=2 -m vlm_policy train --env gym_cards/NumberLine-v0 --model tiny
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

from gym_vlm_cards.evaluate import TABLE_HEADER, evaluate_agents, format_table
from gym_vlm_cards.registration import resolve_env_id
from vlm_policy.training.configs import (
    SFT_GROUPS,
    TRAIN_GROUPS,
    SFTConfig,
    TrainConfig,
    auto_to_rules,
    check_device,
    check_eval_batch,
    env_kwargs_for,
    eval_batch_for,
    flat_settings,
    is_alfworld,
    memory_kwargs,
    step_limit_for,
)
from vlm_policy.training.sweep import SweepOptions


@dataclass
class ResumeOption:
    """What to do with a run folder that holds earlier stages."""

    resume: bool = field(default=False, metadata={"help": "continue PPO from the newest whole checkpoint in --out-dir"})
    overwrite: bool = field(default=False, metadata={
        "help": "redo the stages in --out-dir made with other settings (and every later one) instead of stopping"})


@dataclass
class SFTPaths:
    """Where SFT reads and writes."""

    data: str = field(metadata={"help": "the demonstrations: a directory or JSONL written by `vlm-cards demos`"})
    out: str = field(metadata={"help": "checkpoint directory to write"})


@dataclass
class EvalOptions:
    auto_settings: ClassVar[frozenset[str]] = frozenset({"max_new_tokens", "batch", "constrain_actions", "history_length"})

    model: str = field(default="", metadata={"help": "SFT checkpoint directory, 'tiny', or a PPO agent .zip"})
    env: str = field(default="gym_cards/NumberLine-v0", metadata={"help": "task"})
    episodes: int = field(default=200, metadata={"help": "episodes, seeds --seed onwards"})
    seed: int = field(default=100_000, metadata={"help": "first episode's seed"})
    max_new_tokens: int = field(default=0, metadata={
        "help": "longest answer for a checkpoint (auto: enough for the task oracle's answers); an agent .zip uses its own"})
    prompt_style: Literal["auto", "cot", "action_only"] = field(default="auto", metadata={
        "help": "prompt with or without thoughts (auto: an agent .zip's own, else cot)"})
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu' or 'cuda'"})
    batch: int = field(default=-1, metadata={
        "help": "episodes played at once, one batched generate per step (lower it if a large model runs out of memory; "
                "auto: 64 for the card tasks, 8 for ALFWorld)"})
    data_root: str = field(default="", metadata={"help": "ALFWorld: the data folder (empty: $ALFWORLD_DATA)"})
    split: str = field(default="", metadata={
        "help": "ALFWorld: the split whose first --episodes games are played once each, task types in turn "
                "(empty: valid_seen)"})
    constrain_actions: bool | None = field(default=None, metadata={
        "help": "legal-action decoding for a checkpoint (auto: on for ALFWorld); an agent .zip uses its own"})
    history_length: int | None = field(default=None, metadata={
        "help": "ALFWorld: the last k steps in the prompt (auto: an agent .zip's own, else 0: none)"})
    allow_other_env: bool = field(default=False, metadata={
        "help": "play an agent .zip on another task than the one it was trained on (refused otherwise)"})

    def __post_init__(self) -> None:
        auto_to_rules(self)
        self.env = resolve_env_id(self.env)
        check_device(self.device)
        if self.episodes < 1 or self.seed < 0:
            raise ValueError(f"--episodes must be > 0 and --seed >= 0, got {self.episodes} and {self.seed}")
        if self.max_new_tokens < 0:
            raise ValueError(f"--max-new-tokens must be >= 0, got {self.max_new_tokens}")
        check_eval_batch(self.batch, "--batch")
        env_kwargs_for(self.env, self.data_root, self.split)  # --data-root / --split only for ALFWorld
        self._take_agent_settings()
        memory_kwargs(self.env, self.history_length)
        self.env_kwargs = step_limit_for(self.env)

    def _take_agent_settings(self) -> None:
        """Takes what an agent .zip records of its training, so that it plays as it learned: its legal-action
        decoding (always its own), and the prompt style and memory left to ``auto`` (its ``env_settings``); a
        checkpoint records none (cot, no memory)."""
        recorded: dict = {}
        if self.model.endswith(".zip") and os.path.isfile(self.model):
            from vlm_policy.agents import read_agent_data

            policy_settings = read_agent_data(self.model).get("policy_kwargs") or {}
            self.constrain_actions = bool(policy_settings.get("constrain_actions", False))
            recorded = policy_settings.get("env_settings") or {}
        if self.prompt_style == "auto":
            self.prompt_style = recorded.get("prompt_style", "cot")
        if self.history_length is None:  # the memory is ALFWorld's: not carried to another task (--allow-other-env)
            self.history_length = int(recorded.get("history_length", 0)) if is_alfworld(self.env) else 0

    def alfworld_kwargs(self, games: list[str]) -> dict:
        """The env settings of an ALFWorld evaluation of ``games``: those games, the prompt's memory."""
        return {"game_files": games, **memory_kwargs(self.env, self.history_length)}

    def episodes_at_once(self) -> int:
        """``--batch`` resolved (see :func:`eval_batch_for`), as ``vlm-cards train`` resolves ``--eval-batch``."""
        return eval_batch_for(self.env, self.batch)


@dataclass
class PlayOptions(EvalOptions):
    """Which agent plays which task, and where the GIF goes."""

    episodes: int = field(default=3, metadata={"help": "episodes, seeds --seed onwards"})
    batch: int = field(default=1, init=False)  # one episode at a time, shown step by step
    record: str = field(default="", metadata={"help": "also write every step as a GIF here (e.g. play.gif)"})

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is needed: a PPO agent .zip, an SFT checkpoint directory or 'tiny'")
        super().__post_init__()


@dataclass
class DemosOptions:
    out: str = field(metadata={"help": "directory to write demos.jsonl and images/ into"})
    env: str = field(default="gym_cards/NumberLine-v0", metadata={"help": "task"})
    n: int = field(default=1000, metadata={"help": "oracle steps to record"})
    seed: int = field(default=0, metadata={"help": "episode i is reset with seed + i"})
    image_size: int = field(default=0, metadata={"help": "frame size in pixels (0: the task's default)"})
    action_only: bool = field(default=False, metadata={"help": "answers without chain of thought"})
    data_root: str = field(default="", metadata={"help": "ALFWorld: the data folder (empty: $ALFWORLD_DATA)"})
    split: str = field(default="", metadata={"help": "ALFWorld: the split whose games the oracle plays (empty: train)"})

    def __post_init__(self) -> None:
        self.env = resolve_env_id(self.env)
        if self.n < 1 or self.seed < 0:
            raise ValueError(f"--n must be > 0 and --seed >= 0, got {self.n} and {self.seed}")
        if self.image_size and self.image_size < 32:
            raise ValueError(f"--image-size must be at least 32 pixels (0: the task's default), got {self.image_size}")
        self.env_kwargs = {**env_kwargs_for(self.env, self.data_root, self.split), **step_limit_for(self.env)}
        if self.image_size:
            self.env_kwargs["image_size"] = self.image_size


@dataclass
class BaselineOptions:
    env: str = field(default="gym_cards/NumberLine-v0", metadata={"help": "task"})
    timesteps: int = field(default=15_000, metadata={"help": "env steps of each baseline"})
    episodes: int = field(default=200, metadata={"help": "held-out episodes"})
    seed: int = field(default=100_000, metadata={"help": "first held-out seed"})

    def __post_init__(self) -> None:
        self.env = resolve_env_id(self.env)
        if self.timesteps < 1 or self.episodes < 1 or self.seed < 0:
            raise ValueError(f"--timesteps and --episodes must be > 0 and --seed >= 0, got {self.timesteps}, "
                             f"{self.episodes} and {self.seed}")


COMMANDS = {
    "train": (TRAIN_GROUPS + (ResumeOption,), "demonstrations -> SFT -> PPO -> evaluation, with plots"),
    "sweep": (TRAIN_GROUPS + (ResumeOption, SweepOptions), "`train` once per seed, then a mean ± sd table and one plot"),
    "sft": (SFT_GROUPS + (SFTPaths,), "supervised fine-tuning on demonstrations"),
    "eval": ((EvalOptions,), "success / return / invalid rate of a checkpoint, random and oracle"),
    "play": ((PlayOptions,), "watch an agent play: each step's answer and reward, and a GIF with --record"),
    "demos": ((DemosOptions,), "write oracle demonstrations as chat-messages JSONL + PNGs"),
    "baseline": ((BaselineOptions,), "CNN + PPO and CNN + MaskablePPO on the discrete action space"),
}
#: Settings a command's groups hold that it does not take: `sft` has no validation episodes to stop on.
NOT_TAKEN = {"sft": SFTConfig.validation_settings}


def taken(command: str, group: type) -> list[str]:
    """The settings of ``group`` that ``command`` reads (from the command line or a ``--config`` file)."""
    return [item.name for item in fields(group) if item.init and item.name not in NOT_TAKEN.get(command, ())]


def build_parser(command: str | None = None, show_all: bool = False) -> argparse.ArgumentParser:
    """The ``vlm-cards`` parser; with ``command`` only that subcommand gets its options (the others, listed for
    the top-level help, stay empty), so that ``vlm-cards --help`` answers without importing transformers.
    ``show_all`` puts the advanced settings in the help too. ``parser.subcommands`` maps names to subparsers."""
    parser = argparse.ArgumentParser(prog="vlm-cards", description=_plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (groups, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if command is None or name == command:
            if any(_advanced(group) for group in groups):
                sub.add_argument("--help-all", action="store_true", help=HELP_ALL)
            sub.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
            _add_options(sub, groups, show_all, NOT_TAKEN.get(name, frozenset()))
    parser.subcommands = commands.choices
    return parser


HELP_ALL = "show this help with the advanced settings too"
CONFIG_HELP = ("settings from a JSON or YAML file, keys as option names (env_id: ..., ppo_timesteps: ...), flat or in "
               "sections as in a run's config.json (ppo: {ppo_timesteps: ...}); options given on the command line override it")


def read_config_file(path: str, known: set[str], groups: Sequence[str] = ()) -> dict:
    """The settings of a ``--config`` file (JSON, or YAML by its suffix), every key one of ``known``; a section
    named after one of ``groups`` (as in a run's ``config.json``: ``ppo: {n_epochs: 2}``) holds settings too."""
    import json
    from pathlib import Path

    text = Path(path).read_text()  # a missing file is an OSError: one line naming it
    if Path(path).suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text)
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--config {path} is not valid JSON ({error}); YAML files end in .yaml or .yml") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold a mapping of settings, got {type(values).__name__}")
    values = flat_settings(values, groups)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--config {path} has settings this command does not take: {', '.join(unknown)} "
                         f"(keys are option names with underscores, e.g. ppo_timesteps)")
    return values


def hf_argument_parser() -> type:
    """transformers' ``HfArgumentParser``, without importing transformers where that can be avoided.

    Importing the package runs its ``__init__`` (about 1.4 s here, most of ``vlm-cards train --help``),
    while the module ``transformers/hf_argparser.py`` itself needs only the standard library and yaml: it is
    loaded on its own from the installed package, and imported the usual way where that fails."""
    if "transformers" not in sys.modules:
        alone = standalone_hf_argument_parser()
        if alone is not None:
            return alone
    from transformers import HfArgumentParser

    return HfArgumentParser


def standalone_hf_argument_parser() -> type | None:
    """``HfArgumentParser`` from the installed ``transformers/hf_argparser.py`` loaded as a module of its own
    (the package's ``__init__`` not run); None where it cannot be (a version whose module needs the package)."""
    import importlib.util

    spec = importlib.util.find_spec("transformers")  # finds the package without running its __init__
    if spec is None or not spec.origin:
        return None
    source = os.path.join(os.path.dirname(spec.origin), "hf_argparser.py")
    alone = importlib.util.spec_from_file_location("vlm_cards_hf_argparser", source)
    try:
        module = importlib.util.module_from_spec(alone)
        alone.loader.exec_module(module)
        return module.HfArgumentParser
    except (ImportError, OSError, AttributeError):
        return None


def _add_options(sub: argparse.ArgumentParser, groups, show_all: bool = False,
                 leave_out: frozenset[str] = frozenset()) -> None:
    HfArgumentParser = hf_argument_parser()  # noqa: N806 (the class, under its own name)

    # HfArgumentParser adds one option per dataclass field (help from its metadata, bools as
    # --x / --no-x); each dataclass's options are copied into an argument group of this subcommand,
    # titled by the dataclass's docstring.
    for group in groups:
        section = sub.add_argument_group(_group_title(group))
        for action in HfArgumentParser(group, add_help=False)._actions:
            if action.dest in leave_out:
                continue
            # The usage line and help show the first spelling: a short alias (--env), else the dashed one.
            action.option_strings.sort(key=lambda spelling: (len(spelling) > 2 and "_" in spelling, len(spelling)))
            if action.dest in getattr(group, "auto_settings", ()):
                _take_auto(action)
            if isinstance(action, argparse._StoreFalseAction):  # --no-x shares --x's help: say it turns x off
                action.help = f"turn off: {action.help}"
            elif action.default is True and action.type is not None:
                action.help = argparse.SUPPRESS  # --x of a setting on by default: --no-x is the one to show
            if action.dest in _advanced(group) and not show_all:
                action.help = argparse.SUPPRESS  # still read from the command line and --config files
            section._add_action(action)


def _advanced(group: type) -> frozenset[str]:
    return getattr(group, "advanced_settings", frozenset())


def _take_auto(action: argparse.Action) -> None:
    """Lets an option whose default is a rule read the word ``auto`` for it (also from ``--config`` files)."""
    sentinel, read = action.default, action.type

    def auto_or_value(text: str):
        return sentinel if text == "auto" else read(text)

    auto_or_value.__name__ = getattr(read, "__name__", "value")  # argparse names the type in its errors
    action.type, action.default = auto_or_value, "auto"
    if auto_or_value.__name__ == "string_to_bool":  # on / off with a rule: --x alone turns it on, --x false off
        action.nargs, action.const = "?", True


def cli_reference() -> str:
    """``docs/cli.md``: every command's options, group by group, made from the same dataclasses as the parser
    (``python -m vlm_policy.training.cli_reference > docs/cli.md`` rewrites it; a test keeps it in sync)."""
    lines = ["# The `vlm-cards` command line", "",
             "Generated from the option dataclasses (`python -m vlm_policy.training.cli_reference > docs/cli.md`); "
             "every command also takes `--config FILE`: " + CONFIG_HELP + ". Settings marked (advanced) are left "
             "out of `--help` (`--help-all` shows them) and are set the same way.", ""]
    parser = build_parser(show_all=True)
    for name, sub in parser.subcommands.items():
        lines += [f"## `vlm-cards {name}`", "", COMMANDS[name][1], ""]
        advanced = set().union(*map(_advanced, COMMANDS[name][0]))
        for group in sub._action_groups[2:]:
            lines += [f"**{group.title}**", "", "| option | default | what it does |", "|---|---|---|"]
            for action in group._group_actions:
                if action.help == argparse.SUPPRESS:
                    continue  # --x of a setting that is on by default (its --no-x is listed)
                default = "" if action.default in (None, argparse.SUPPRESS) else f"`{action.default!r}`"
                spelling = " / ".join(f"`{s}`" for s in action.option_strings[:2] if "_" not in s[2:])
                mark = " (advanced)" if action.dest in advanced else ""
                lines.append(f"| {spelling}{mark} | {default} | {(action.help or '').replace('|', '/')} |")
            lines.append("")
    return "\n".join(lines)


def _plain(text: str) -> str:
    """A docstring as plain text for ``--help``: reStructuredText's roles and double backquotes removed."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def _group_title(group: type) -> str:
    """``model: Which model, ...`` from :class:`ModelConfig`'s name and its docstring's first line."""
    name = group.__name__.removesuffix("Config").removesuffix("Options").removesuffix("Option").lower()
    summary = (group.__doc__ or "").strip().partition("\n")[0]
    return f"{name}: {summary.rstrip('.')}" if summary and not summary.startswith(group.__name__ + "(") else name


def parse(argv: Sequence[str] | None = None) -> tuple[str, list]:
    """The command and its config groups, validated (a bad value exits with its message)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_all = "--help-all" in argv
    if show_all:
        argv[argv.index("--help-all")] = "--help"
    parser = build_parser(next((word for word in argv if not word.startswith("-")), ""), show_all)
    args = parser.parse_args(argv)
    groups, _ = COMMANDS[args.command]
    try:
        if args.config:
            # The file's values become the defaults, then the command line is read again over them.
            known = {name for group in groups for name in taken(args.command, group)}
            # A run's config.json groups its settings in sections named as TrainConfig's attributes.
            sections = [name for name, group in TrainConfig.group_names().items() if group in groups]
            values = read_config_file(args.config, known, sections)
            parser.subcommands[args.command].set_defaults(**values)
            args = parser.parse_args(argv)
        return args.command, _into_groups(args.command, groups, args)
    except (ValueError, OSError) as error:
        parser.error(str(error))


def _into_groups(command: str, groups, args: argparse.Namespace) -> list:
    """One dataclass per group, from the parsed options (each group's __post_init__ validates it)."""
    return [group(**{name: getattr(args, name) for name in taken(command, group)}) for group in groups]


def _train(groups: list) -> int:
    from vlm_policy.training.pipeline import Pipeline

    *config_groups, options = groups
    Pipeline(TrainConfig.from_groups(*config_groups)).run(resume=options.resume, overwrite=options.overwrite)
    return 0


def _sweep(groups: list) -> int:
    from vlm_policy.training.sweep import run_sweep

    *config_groups, options, sweep = groups
    outcomes = run_sweep(TrainConfig.from_groups(*config_groups), sweep, resume=options.resume,
                         overwrite=options.overwrite)
    return 1 if any(o.error for o in outcomes) else 0


def _sft(groups: list) -> int:
    from vlm_policy.training.demos import read_demonstrations
    from vlm_policy.training.sft import run_sft

    common, model, sft, paths = groups
    out = run_sft(read_demonstrations(paths.data), paths.out, sft=sft, model=model, common=common)
    from vlm_policy.distributed import current

    if current().is_main:
        print(f"saved the SFT checkpoint to {out}")
    return 0


def _policy_for(options: EvalOptions, env_kwargs: dict | None = None):
    """The policy --model names (SFT checkpoint, 'tiny' or agent .zip) and a function making its eval env."""
    from vlm_policy.training.evaluation import eval_env_factory, standalone_policy

    if options.model.endswith(".zip"):
        # Read without unpickling anything from the file (see vlm_policy.agents.load_agent).
        from vlm_policy.agents import agent_answer_length, agent_base, load_agent, read_agent_data

        data = read_agent_data(options.model)
        source, budget = agent_base(options.model, data), agent_answer_length(data)
        make = eval_env_factory(options.env, source, budget, options.prompt_style, env_kwargs, options.constrain_actions)
        policy = load_agent(options.model, make(), device=options.device,
                            allow_other_env=options.allow_other_env).policy
        policy.set_training_mode(False)
        return policy, make
    source = options.model
    budget = options.max_new_tokens or _answer_budget(options, source, env_kwargs)
    make = eval_env_factory(options.env, source, budget, options.prompt_style, env_kwargs, options.constrain_actions)
    return standalone_policy(source, make(), device=options.device), make


def _eval(groups: list) -> int:
    from vlm_policy.training.evaluation import evaluate_vlm

    (options,) = groups
    if is_alfworld(options.env):
        return _eval_alfworld(options)
    rows = []
    if options.model:
        policy, make = _policy_for(options, options.env_kwargs)
        result, _ = evaluate_vlm(policy, make, options.episodes, options.seed,
                                 parallel=options.episodes_at_once(), name=options.model, progress=True)
        rows.append(result)
    rows += evaluate_agents(options.env, ["random", "oracle"], options.episodes, options.seed,
                            env_kwargs=options.env_kwargs, progress=True)
    print(f"{options.env}, {options.episodes} episodes, seeds {options.seed}..{options.seed + options.episodes - 1}, "
          "greedy answers")
    print(format_table(TABLE_HEADER, [r.row() for r in rows]))
    return 0


def _play(groups: list) -> int:
    from vlm_policy.training.play import play_and_show

    (options,) = groups
    env_kwargs = options.env_kwargs
    if is_alfworld(options.env):
        from alfworld_bridge.evaluation import evaluation_games

        env_kwargs = options.alfworld_kwargs([str(g) for g in evaluation_games(
            options.data_root or None, options.split or "valid_seen", options.episodes)])
    policy, make = _policy_for(options, env_kwargs)
    play_and_show(policy, make, options.episodes, options.seed, options.record or None)
    return 0


def _eval_alfworld(options: EvalOptions) -> int:
    """ALFWorld: the first --episodes games of the split, each once; a per-task-type table."""
    from functools import partial

    from alfworld_bridge.evaluation import AGENT_LABELS, evaluation_games, per_type_table, play_agents
    from vlm_policy.subprocess_envs import env_slots
    from vlm_policy.training.evaluation import evaluate_vlm_on_games

    split = options.split or "valid_seen"
    games = [str(g) for g in evaluation_games(options.data_root or None, split, options.episodes)]
    # As the main job's evaluations: --batch envs step side by side in subprocesses (a reset loads a game).
    parallel = min(options.episodes_at_once(), len(games))
    played = play_agents(list(AGENT_LABELS), games, seed=options.seed, progress=True, env_id=options.env,
                         slots=partial(env_slots, n=parallel))
    rows = {AGENT_LABELS[name]: outcomes for name, outcomes in played.items()}
    if options.model:
        policy, make = _policy_for(options, options.alfworld_kwargs(games))
        rows[options.model] = evaluate_vlm_on_games(policy, make, len(games), options.seed, name=options.model,
                                                    progress=True, parallel=parallel, subprocesses=True)[2]
    print(f"{options.env} {split}: {len(games)} games, each once, greedy answers; success % / goal-condition %")
    print(per_type_table(rows))
    return 0


def _answer_budget(options: EvalOptions, source: str, env_kwargs: dict | None = None) -> int:
    """For a checkpoint, an answer budget that fits the task oracle's answers."""
    from vlm_policy.env_bridge import frame_kwargs
    from vlm_policy.loading import load_processor
    from vlm_policy.training.demos import answer_token_budget, longest_answer_tokens, oracle_answers

    processor = load_processor(source)
    answers = oracle_answers(options.env, chain_of_thought=options.prompt_style == "cot",
                             env_kwargs=frame_kwargs(options.env, processor, env_kwargs))
    return answer_token_budget(longest_answer_tokens(answers, processor.tokenizer))


def _demos(groups: list) -> int:
    from vlm_policy.training.demos import write_demonstrations

    (options,) = groups
    path = write_demonstrations(options.env, options.n, options.out, seed=options.seed,
                                chain_of_thought=not options.action_only, env_kwargs=options.env_kwargs)
    print(f"wrote {options.n} examples to {path}")
    return 0


def _baseline(groups: list) -> int:
    from vlm_policy.training.baselines import train_cnn_baselines

    (options,) = groups
    rows = train_cnn_baselines(options.env, options.timesteps, options.episodes, options.seed, progress=True)
    print(f"{options.env}: {options.timesteps} env steps each, {options.episodes} held-out episodes from seed {options.seed}")
    print(format_table(TABLE_HEADER, [r.row() for r in rows]))
    return 0


RUNNERS = {"train": _train, "sweep": _sweep, "sft": _sft, "eval": _eval, "play": _play, "demos": _demos,
           "baseline": _baseline}


# Commands that train data-parallel when started by torchrun (vlm_policy.distributed).
DATA_PARALLEL_COMMANDS = ("train", "sft")


#: Set to any value to see the traceback of a user error instead of its one-line message.
TRACEBACK_VARIABLE = "VLM_CARDS_TRACEBACK"


def _user_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises (a refused run folder, a bad value or path, an unknown env): one line each."""
    import gymnasium

    from vlm_policy.training.run_folder import RunRefused

    return RunRefused, ValueError, OSError, gymnasium.error.Error


def _run_command(command: str, groups: list) -> int:
    """Runs ``command``; a user error prints ``vlm-cards <command>: <cause and fix>`` and returns 2."""
    try:
        return RUNNERS[command](groups)
    except _user_errors() as error:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(f"vlm-cards {command}: {error} (set {TRACEBACK_VARIABLE}=1 for the traceback)", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    command, groups = parse(argv)
    from vlm_policy import distributed  # after parsing: --help answers without importing torch

    if not distributed.launched_by_torchrun():
        return _run_command(command, groups)
    if command not in DATA_PARALLEL_COMMANDS:
        print(f"vlm-cards {command} runs in one process; start it without torchrun (data-parallel commands: "
              f"{', '.join(DATA_PARALLEL_COMMANDS)})", file=sys.stderr)
        return 2
    device = next(group.device for group in groups if hasattr(group, "device"))
    distributed.init_distributed(device)
    try:
        return _run_command(command, groups)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
