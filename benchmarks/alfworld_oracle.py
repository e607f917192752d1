"""The ALFWorld oracle on every game of a data folder: wins, episode length, reset and step times.

    python benchmarks/alfworld_oracle.py --data ../shared/alfworld-data
    python benchmarks/alfworld_oracle.py --data ../shared/alfworld-data --splits valid_seen --limit 20 --detours 5

Each game is played once by ``env.unwrapped.oracle_answer()`` (:mod:`alfworld_bridge.expert`)
through ``gym.make("alfworld/ALFWorld-v0")`` with its registered 50-step limit. ``--detours K``
first plays K random admissible commands in each game, to show that the oracle recovers from moves
it did not choose. Prints one row per split and task type, and a line per game not won.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import gymnasium as gym
import numpy as np

import alfworld_bridge  # noqa: F401  (registers alfworld/ALFWorld-v0)
from alfworld_bridge.games import find_games


def play(env, game, detours: int, rng: np.random.Generator) -> dict:
    start = time.perf_counter()
    _, info = env.reset(options={"game": str(game)})
    reset_s = time.perf_counter() - start
    steps, step_s, done = 0, 0.0, False
    while not done:
        unwrapped = env.unwrapped
        if steps < detours:
            commands = unwrapped.admissible_commands
            answer = json.dumps({"action": commands[int(rng.integers(len(commands)))]})
        else:
            answer = unwrapped.oracle_answer()
        start = time.perf_counter()
        _, _, terminated, truncated, info = env.step(answer)
        step_s += time.perf_counter() - start
        steps += 1
        done = terminated or truncated
    return {"won": bool(info["won"]), "steps": steps, "reset_s": reset_s, "step_s": step_s / steps,
            "task_type": info["task_type"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an alfworld-download folder (json_2.1.1/<split>/...)")
    parser.add_argument("--splits", nargs="+", default=["valid_seen", "valid_unseen", "valid_train"])
    parser.add_argument("--limit", type=int, default=0, help="games per split (0: all)")
    parser.add_argument("--detours", type=int, default=0, help="random admissible commands before the oracle plays")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    start = time.perf_counter()
    for split in args.splits:
        games = find_games(args.data, split)
        games = games[: args.limit] if args.limit else games
        env = gym.make("alfworld/ALFWorld-v0", game_files=games)
        for index, game in enumerate(games):
            try:
                result = play(env, game, args.detours, rng)
            except RuntimeError as error:  # the expert found no move: counted as not won, named
                print(f"no expert move: {game}: {error}", flush=True)
                result = {"won": False, "steps": 0, "reset_s": 0.0, "step_s": 0.0,
                          "task_type": env.unwrapped.targets.task_type}
            rows[(split, result["task_type"])].append(result)
            if not result["won"]:
                print(f"not won: {game} ({result['steps']} steps)", flush=True)
            if (index + 1) % 50 == 0:
                print(f"{split}: {index + 1}/{len(games)} games", flush=True)
        env.close()
    everything = [r for results in rows.values() for r in results]
    print(f"\nALFWorld oracle, {len(everything)} games, {args.detours} random detour(s) first, "
          f"{time.perf_counter() - start:.0f} s in all")
    print("| split | task type | games | won | mean steps | mean reset (s) | mean step (s) |")
    print("|---|---|---|---|---|---|---|")
    for (split, task_type), results in sorted(rows.items()):
        print(_row(split, task_type, results))
    print(_row("all", "all", everything))


def _row(split: str, task_type: str, results: list[dict]) -> str:
    won = sum(r["won"] for r in results)
    return (f"| {split} | {task_type} | {len(results)} | {won}/{len(results)} | "
            f"{np.mean([r['steps'] for r in results]):.1f} | {np.mean([r['reset_s'] for r in results]):.2f} | "
            f"{np.mean([r['step_s'] for r in results]):.3f} |")


if __name__ == "__main__":
    main()
