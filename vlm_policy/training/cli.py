"""``vlm-cards``: the command line of the project.

    vlm-cards train --env gym_cards/NumberLine-v0 --model tiny     demonstrations -> SFT -> PPO -> table + plots
    vlm-cards eval --model runs/numberline/sft --env gym_cards/NumberLine-v0 --episodes 200 --seed 100000
    vlm-cards demos --env gym_cards/EZPoints-v0 --n 1000 --out demos/ezpoints
    vlm-cards sft --demos demos/ezpoints --out checkpoints/ezpoints-sft
    vlm-cards baseline --env gym_cards/NumberLine-v0 --timesteps 20000

``vlm-cards train --help`` lists every knob of :class:`vlm_policy.training.pipeline.TrainConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

from gym_vlm_cards.evaluate import TABLE_HEADER, evaluate_agents, format_table


def _add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    for item in dataclasses.fields(cls):
        flag = "--" + item.name.replace("_", "-")
        help_text = f"{item.metadata.get('help', '')} (default: {item.default})"
        if item.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=item.default, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(item.type if isinstance(item.type, str) else item.type.__name__, str)
            parser.add_argument(flag, type=kind, default=item.default, help=help_text)


def _dataclass_from(cls, args: argparse.Namespace):
    return cls(**{item.name: getattr(args, item.name) for item in dataclasses.fields(cls)})


def _train(args: argparse.Namespace) -> int:
    from vlm_policy.training.pipeline import Pipeline, TrainConfig

    config = _dataclass_from(TrainConfig, args)
    if config.env_id == TrainConfig.env_id and args.env:
        config.env_id = args.env
    Pipeline(config).run(resume=args.resume)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import gymnasium as gym

    from vlm_policy.env_bridge import TokenActionWrapper
    from vlm_policy.training.evaluation import evaluate_vlm, standalone_policy
    from vlm_policy.loading import load_processor, preferred_image_size

    rows = []
    if args.model:
        if args.model.endswith(".zip"):
            from stable_baselines3 import PPO

            policy = PPO.load(args.model, device="cpu").policy
            policy.set_training_mode(False)
            source = policy.model_source
        else:
            policy, source = None, args.model
        processor = load_processor(source)
        size = preferred_image_size(processor)
        kwargs = {"image_size": size} if size and args.env.startswith("gym_cards/") else {}
        budget = args.max_new_tokens or _answer_budget(args, policy, processor.tokenizer, kwargs)

        def make():
            return TokenActionWrapper(gym.make(args.env, **kwargs), processor.tokenizer, budget, args.prompt_style)

        if policy is None:
            policy = standalone_policy(source, make())
        result, _ = evaluate_vlm(policy, make, args.episodes, args.seed, name=args.model, progress=True)
        rows.append(result)
    rows += evaluate_agents(args.env, ["random", "oracle"], args.episodes, args.seed, progress=True)
    print(f"{args.env}, {args.episodes} episodes, seeds {args.seed}..{args.seed + args.episodes - 1}, greedy answers")
    print(format_table(TABLE_HEADER, [r.row() for r in rows]))
    return 0


def _answer_budget(args: argparse.Namespace, agent_policy, tokenizer, env_kwargs: dict) -> int:
    """A PPO agent's own answer length; for a checkpoint, one that fits the task oracle's answers."""
    if agent_policy is not None:
        return len(agent_policy.action_space.nvec)
    from vlm_policy.training.demos import answer_token_budget, longest_answer_tokens, oracle_answers

    answers = oracle_answers(args.env, chain_of_thought=args.prompt_style == "cot", env_kwargs=env_kwargs)
    return answer_token_budget(longest_answer_tokens(answers, tokenizer))


def _demos(args: argparse.Namespace) -> int:
    from vlm_policy.training.demos import write_demonstrations

    path = write_demonstrations(args.env, args.n, args.out, seed=args.seed, chain_of_thought=not args.action_only,
                                env_kwargs={"image_size": args.image_size} if args.image_size else None)
    print(f"wrote {args.n} examples to {path}")
    return 0


def _sft(args: argparse.Namespace) -> int:
    from vlm_policy.training.demos import read_demonstrations
    from vlm_policy.training.sft import SFTConfig, run_sft

    config = _dataclass_from(SFTConfig, args)
    out = run_sft(config, read_demonstrations(args.demos), args.out, device=args.device)
    print(f"saved the SFT checkpoint to {out}")
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from vlm_policy.training.baselines import train_cnn_baselines

    rows = train_cnn_baselines(args.env, args.timesteps, args.episodes, args.seed, progress=True)
    print(f"{args.env}: {args.timesteps} env steps each, {args.episodes} held-out episodes from seed {args.seed}")
    print(format_table(TABLE_HEADER, [r.row() for r in rows]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from vlm_policy.training.sft import SFTConfig
    from vlm_policy.training.pipeline import TrainConfig

    parser = argparse.ArgumentParser(prog="vlm-cards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="demonstrations -> SFT -> PPO -> evaluation, with plots")
    _add_dataclass_arguments(train, TrainConfig)
    train.add_argument("--env", help="alias of --env-id")
    train.add_argument("--resume", action="store_true", help="continue PPO from the last checkpoint in --out-dir")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="success / return / invalid rate of a checkpoint, random and oracle")
    evaluate.add_argument("--model", help="SFT checkpoint directory, 'tiny', or a PPO agent .zip")
    evaluate.add_argument("--env", default="gym_cards/NumberLine-v0")
    evaluate.add_argument("--episodes", type=int, default=200)
    evaluate.add_argument("--seed", type=int, default=100_000)
    evaluate.add_argument("--max-new-tokens", type=int, default=0,
                          help="longest answer; 0 (default): a PPO agent's own, else enough for the task oracle's answers")
    evaluate.add_argument("--prompt-style", choices=["cot", "action_only"], default="cot")
    evaluate.set_defaults(func=_eval)

    demos = commands.add_parser("demos", help="write oracle demonstrations as chat-messages JSONL + PNGs")
    demos.add_argument("--env", default="gym_cards/NumberLine-v0")
    demos.add_argument("--n", type=int, default=1000)
    demos.add_argument("--out", required=True)
    demos.add_argument("--seed", type=int, default=0)
    demos.add_argument("--image-size", type=int, default=None)
    demos.add_argument("--action-only", action="store_true", help="answers without chain of thought")
    demos.set_defaults(func=_demos)

    sft = commands.add_parser("sft", help="supervised fine-tuning on demonstrations")
    _add_dataclass_arguments(sft, SFTConfig)
    sft.add_argument("--demos", required=True, help="directory or JSONL written by `vlm-cards demos`")
    sft.add_argument("--out", required=True, help="checkpoint directory to write")
    sft.add_argument("--device", default="cpu")
    sft.set_defaults(func=_sft)

    baseline = commands.add_parser("baseline", help="CNN + PPO and CNN + MaskablePPO on the discrete action space")
    baseline.add_argument("--env", default="gym_cards/NumberLine-v0")
    baseline.add_argument("--timesteps", type=int, default=15_000)
    baseline.add_argument("--episodes", type=int, default=200)
    baseline.add_argument("--seed", type=int, default=100_000)
    baseline.set_defaults(func=_baseline)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
