"""Success rate, mean return and invalid-action rate of an agent over seeded episodes.

    python -m gym_vlm_cards.evaluate --agent oracle --env gym_cards/Points24-v0 --episodes 200 --seed 0
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

import gym_vlm_cards  # noqa: F401  (registers the tasks)
from gym_vlm_cards.agents import AGENTS, Agent
from gym_vlm_cards.registration import resolve_env_id


@dataclass(frozen=True)
class EvalResult:
    """What an agent scored; episode ``i`` was reset with seed ``seed + i``."""

    name: str
    episodes: int
    success_rate: float
    mean_return: float
    invalid_rate: float
    mean_length: float

    def row(self) -> list[str]:
        return [
            self.name,
            str(self.episodes),
            f"{100 * self.success_rate:.1f}%",
            f"{self.mean_return:+.3f}",
            f"{100 * self.invalid_rate:.1f}%",
            f"{self.mean_length:.2f}",
        ]


TABLE_HEADER = ["agent", "episodes", "success", "mean return", "invalid actions", "mean length"]


def run_episodes(
    env: gym.Env, agent: Agent, episodes: int, seed: int, name: str = "agent", progress: bool = False
) -> EvalResult:
    """Plays ``episodes`` episodes, the i-th reset with ``seed + i``, and summarises them."""
    successes = invalid = steps = 0
    total_return = 0.0
    iterator: Any = range(episodes)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"eval {name}", unit="ep", leave=False)
    for i in iterator:
        observation, info = env.reset(seed=seed + i)
        done = False
        while not done:
            observation, reward, terminated, truncated, info = env.step(agent.act(observation, info))
            total_return += float(reward)
            steps += 1
            invalid += not info.get("action_is_valid", True)
            done = terminated or truncated
        successes += bool(info.get("is_success", False))
    return EvalResult(
        name=name,
        episodes=episodes,
        success_rate=successes / max(episodes, 1),
        mean_return=total_return / max(episodes, 1),
        invalid_rate=invalid / max(steps, 1),
        mean_length=steps / max(episodes, 1),
    )


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with aligned columns (no dependency needed)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "+".join("-" * (w + 2) for w in widths)
    def fmt(row: Sequence[str]) -> str:
        return "|".join(f" {str(c):<{w}} " for c, w in zip(row, widths))
    return "\n".join([fmt(header), line, *(fmt(r) for r in rows)])


def evaluate_agents(
    env_id: str, agent_names: Sequence[str], episodes: int, seed: int, env_kwargs: dict[str, Any] | None = None,
    progress: bool = True, make_agent: Callable[[str, gym.Env], Agent] | None = None,
) -> list[EvalResult]:
    """Evaluates each named agent on the same seeds."""
    results = []
    for name in agent_names:
        env = gym.make(env_id, **(env_kwargs or {}))
        agent = make_agent(name, env) if make_agent else AGENTS[name](env, seed=seed)
        results.append(run_episodes(env, agent, episodes, seed, name=name, progress=progress))
        env.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", choices=sorted(AGENTS), nargs="+", default=["random", "oracle"])
    parser.add_argument("--env", default="gym_cards/NumberLine-v0", help="a registered task id, or module:id for your own")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i")
    parser.add_argument("--action-mode", choices=["text", "discrete"], default="text")
    args = parser.parse_args(argv)
    try:
        args.env = resolve_env_id(args.env)
    except ValueError as error:
        parser.error(str(error))
    results = evaluate_agents(args.env, args.agent, args.episodes, args.seed, {"action_mode": args.action_mode})
    print(f"{args.env}, {args.episodes} episodes, seeds {args.seed}..{args.seed + args.episodes - 1}")
    print(format_table(TABLE_HEADER, [r.row() for r in results]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
