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


@dataclass
class EpisodeEnd:
    """How episode ``index`` ended: its final ``info``, return, length and invalid actions."""

    index: int
    info: dict[str, Any]
    episode_return: float = 0.0
    length: int = 0
    invalid: int = 0

    @property
    def success(self) -> bool:
        return bool(self.info.get("is_success", False))


#: ``watch(index, env, observation, reward, info)``: called after each reset (reward None) and step of
#: episode ``index`` (``env`` is None where the env steps in another process); True ends the episode there
#: as lost (truncated).
Watch = Callable[[int, "gym.Env | None", Any, "float | None", dict[str, Any]], bool]


class EnvSlots:
    """The envs an episode loop plays on, stepped together: each call takes a request per slot and returns
    each slot's answer. This base steps a list of envs in this process, one after the other; a subclass may
    step them elsewhere at once (``vlm_policy.subprocess_envs``: in subprocesses)."""

    def __init__(self, envs: Sequence[gym.Env]) -> None:
        self.envs = list(envs)

    def __len__(self) -> int:
        return len(self.envs)

    def env(self, slot: int) -> gym.Env | None:
        """The env of ``slot`` where it lives in this process (for ``watch``), else None."""
        return self.envs[slot]

    def reset(self, requests: dict[int, tuple[int | None, dict[str, Any] | None]]) -> dict[int, tuple[Any, dict]]:
        """``{slot: (seed, options)}`` -> ``{slot: (observation, info)}``."""
        return {slot: self.envs[slot].reset(seed=seed, options=options) for slot, (seed, options) in requests.items()}

    def step(self, actions: dict[int, Any]) -> dict[int, tuple[Any, float, bool, bool, dict]]:
        """``{slot: action}`` -> ``{slot: (observation, reward, terminated, truncated, info)}``."""
        return {slot: self.envs[slot].step(action) for slot, action in actions.items()}

    def close(self) -> None:
        for env in self.envs:
            env.close()


def play_episodes(envs: Sequence[gym.Env] | EnvSlots, choose: Callable[[list[Any], list[dict[str, Any]]], Sequence[Any]],
                  episodes: int, seed: int | None = None, reset_options: Callable[[int], dict[str, Any]] | None = None,
                  watch: Watch | None = None, progress: bool = False, name: str = "agent") -> list[EpisodeEnd]:
    """The episode loop every evaluation plays: episodes ``0 .. episodes-1`` over ``envs`` (a list of envs, or
    :class:`EnvSlots`), which step together (one ``choose`` call per step for all of them, so a batched policy
    answers at once); an env whose episode ends starts the next one not yet begun.

    :param choose: the actions of the active envs, from their observations and infos (in that order).
    :param seed: episode ``i`` is reset with ``seed + i`` (None: unseeded).
    :param reset_options: episode ``i``'s ``reset`` options (ALFWorld: ``{"game": i}``).
    :param watch: see :data:`Watch` (records frames, ends loops).
    :return: each episode's end, in episode order.
    """
    batch = envs if isinstance(envs, EnvSlots) else EnvSlots(envs)
    slots: list[dict[str, Any] | None] = [None] * min(len(batch), episodes)
    ends: list[EpisodeEnd] = []
    next_episode = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, desc=f"eval {name}", unit="ep", leave=False)

    def start(free: list[int]) -> None:
        """The next episodes on the ``free`` slots (as many as are left), reset together."""
        nonlocal next_episode
        indices = {}
        for slot in free[:episodes - next_episode]:
            indices[slot], next_episode = next_episode, next_episode + 1
        requests = {slot: (None if seed is None else seed + index, reset_options(index) if reset_options else None)
                    for slot, index in indices.items()}
        for slot, (obs, info) in batch.reset(requests).items():
            slots[slot] = {"obs": obs, "info": info, "end": EpisodeEnd(indices[slot], info)}
            if watch is not None:
                watch(indices[slot], batch.env(slot), obs, None, info)

    start(list(range(len(slots))))
    while any(state is not None for state in slots):
        active = [slot for slot, state in enumerate(slots) if state is not None]
        actions = choose([slots[slot]["obs"] for slot in active], [slots[slot]["info"] for slot in active])
        free = []
        for slot, (obs, reward, terminated, truncated, info) in batch.step(dict(zip(active, actions))).items():
            state, end = slots[slot], slots[slot]["end"]
            end.episode_return += float(reward)
            end.length += 1
            end.invalid += not info.get("action_is_valid", True)
            state["obs"], state["info"], end.info = obs, info, info
            if watch is not None and watch(end.index, batch.env(slot), obs, float(reward), info):
                truncated = True
            if terminated or truncated:
                ends.append(end)
                if bar is not None:
                    bar.update(1)
                slots[slot] = None
                free.append(slot)
        if free and next_episode < episodes:
            start(free)
    if bar is not None:
        bar.close()
    return sorted(ends, key=lambda end: end.index)


def summarise(name: str, ends: Sequence[EpisodeEnd]) -> EvalResult:
    """The :class:`EvalResult` of some episodes' ends."""
    episodes, steps = len(ends), sum(end.length for end in ends)
    return EvalResult(
        name=name,
        episodes=episodes,
        success_rate=sum(end.success for end in ends) / max(episodes, 1),
        mean_return=sum(end.episode_return for end in ends) / max(episodes, 1),
        invalid_rate=sum(end.invalid for end in ends) / max(steps, 1),
        mean_length=steps / max(episodes, 1),
    )


def acting(agent: Agent) -> Callable[[list[Any], list[dict[str, Any]]], list[Any]]:
    """:func:`play_episodes`' ``choose`` for an agent that acts on one observation at a time."""
    return lambda observations, infos: [agent.act(obs, info) for obs, info in zip(observations, infos)]


def run_episodes(
    env: gym.Env, agent: Agent, episodes: int, seed: int, name: str = "agent", progress: bool = False
) -> EvalResult:
    """Plays ``episodes`` episodes, the i-th reset with ``seed + i``, and summarises them."""
    return summarise(name, play_episodes([env], acting(agent), episodes, seed, progress=progress, name=name))


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
