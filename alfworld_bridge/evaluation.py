"""ALFWorld scores per task type: which games to play, and the table of success and goal conditions.

An evaluation plays each game of a split once (``reset(options={"game": i})``), not seeded random
picks, so every agent meets the same games. :func:`evaluation_games` orders a split's games round
robin over the six task types, so the first ``n`` of them are as balanced as the split allows: an
evaluation on a budget (``n`` smaller than the split) still covers every type.

    python -m alfworld_bridge.evaluation --data-root ../shared/alfworld-data --split valid_seen --agent random oracle
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from alfworld_bridge.games import find_games, read_traj_data
from alfworld_bridge.goals import TASK_TYPES
from gym_vlm_cards.evaluate import EnvSlots, EpisodeEnd, play_episodes

#: Column titles of the six task types (ALFWorld's own short names).
SHORT_NAMES = {
    "pick_and_place_simple": "Pick",
    "look_at_obj_in_light": "Look",
    "pick_clean_then_place_in_recep": "Clean",
    "pick_heat_then_place_in_recep": "Heat",
    "pick_cool_then_place_in_recep": "Cool",
    "pick_two_obj_and_place": "Pick2",
}


def evaluation_games(data_root: str | os.PathLike | None, split: str, n: int | None = None,
                     cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The split's games, task types taken in turn (sorted within each type); the first ``n`` (all if None)."""
    by_type: dict[str, list[Path]] = {task: [] for task in TASK_TYPES}
    for game in find_games(data_root, split, cache_dir):
        by_type[read_traj_data(game)["task_type"]].append(game)
    ordered: list[Path] = []
    for rank in range(max(len(games) for games in by_type.values())):
        ordered += [games[rank] for games in by_type.values() if rank < len(games)]
    return ordered if n is None else ordered[:n]


@dataclass(frozen=True)
class Outcome:
    """How one episode ended."""

    game: str
    task_type: str
    success: bool
    goal_condition_success_rate: float
    episode_return: float
    length: int

    @classmethod
    def from_end(cls, end: EpisodeEnd) -> Outcome:
        """The outcome of a game played by :func:`gym_vlm_cards.evaluate.play_episodes`."""
        info = end.info
        return cls(game=str(info.get("game_file", "")), task_type=str(info.get("task_type", "")),
                   success=end.success, goal_condition_success_rate=float(info.get("goal_condition_success_rate", 0.0)),
                   episode_return=float(end.episode_return), length=int(end.length))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: How the tables name the reference agents of :data:`gym_vlm_cards.agents.AGENTS`.
AGENT_LABELS = {"random": "random admissible command", "oracle": "oracle"}


def agent_env(agent: str, env_id: str, games: Sequence[str], **env_kwargs: Any):
    """An env of ``games`` played by the reference agent ``agent`` (``random``, ``oracle``) itself
    (:class:`gym_vlm_cards.agents.AgentPlays`): a function of plain arguments, so a subprocess can make it."""
    import gymnasium as gym

    from gym_vlm_cards.agents import AgentPlays
    from gym_vlm_cards.registration import importable_id

    return AgentPlays(gym.make(importable_id(env_id), game_files=list(games), **env_kwargs), agent)


def play_agents(names: Sequence[str], games: Sequence[str | os.PathLike], seed: int = 0, progress: bool = False,
                env_id: str = "alfworld/ALFWorld-v0", tag: str = "",
                slots: Callable[[Callable[[], Any]], EnvSlots] | None = None,
                **env_kwargs: Any) -> dict[str, list[Outcome]]:
    """Each named reference agent (``random``, ``oracle``) on every game once (game ``i`` reset with seed
    ``seed + i``, which also seeds the random agent); outcomes by agent name.

    :param tag: added to the progress bars' names (e.g. the split).
    :param slots: makes the envs to play on from a function making one (e.g. several in subprocesses:
        ``vlm_policy.subprocess_envs.SubprocessEnvSlots``); by default one env in this process.
    :param env_kwargs: more ``gym.make`` arguments (e.g. ``max_episode_steps``).
    """
    played = {}
    for name in names:
        make = partial(agent_env, name, env_id, [str(g) for g in games], **env_kwargs)
        envs = slots(make) if slots is not None else EnvSlots([make()])
        try:  # the agent inside each env chooses: the loop's actions are placeholders
            ends = play_episodes(envs, lambda observations, _: [None] * len(observations), len(games), seed=seed,
                                 reset_options=lambda i: {"game": i}, progress=progress, name=f"{name} {tag}".strip())
        finally:
            envs.close()
        played[name] = [Outcome.from_end(end) for end in ends]
    return played


def _cell(outcomes: Sequence[Outcome]) -> str:
    if not outcomes:
        return "-"
    success = 100 * sum(o.success for o in outcomes) / len(outcomes)
    goals = 100 * sum(o.goal_condition_success_rate for o in outcomes) / len(outcomes)
    return f"{success:.1f} / {goals:.1f}"


def per_type_table(rows: dict[str, Sequence[Outcome]]) -> str:
    """A Markdown table: a row per agent, a column per task type and one for all games; each cell is
    ``success % / mean goal-condition %`` (the header gives each type's number of games)."""
    first = next(iter(rows.values()), [])
    counts = {task: sum(o.task_type == task for o in first) for task in TASK_TYPES}
    header = ["agent"] + [f"{SHORT_NAMES[t]} ({counts[t]})" for t in TASK_TYPES] + [f"All ({len(first)})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, outcomes in rows.items():
        cells = [_cell([o for o in outcomes if o.task_type == task]) for task in TASK_TYPES] + [_cell(outcomes)]
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from gym_vlm_cards.agents import AGENTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="ALFWorld data folder (default: $ALFWORLD_DATA)")
    parser.add_argument("--split", default="valid_seen")
    parser.add_argument("--games", type=int, default=0, help="the first n games, task types in turn (0: all)")
    parser.add_argument("--agent", choices=sorted(AGENTS), nargs="+", default=["random", "oracle"])
    parser.add_argument("--seed", type=int, default=0, help="seeds the random agent")
    args = parser.parse_args(argv)
    games = evaluation_games(args.data_root, args.split, args.games or None)
    rows = play_agents(args.agent, games, seed=args.seed, progress=True)
    print(f"ALFWorld {args.split}, {len(games)} games, success % / goal-condition %")
    print(per_type_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
