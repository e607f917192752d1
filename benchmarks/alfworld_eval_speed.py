"""ALFWorld evaluation games per second with the envs in this process and in subprocesses, side by side.

    python benchmarks/alfworld_eval_speed.py --data ../shared/alfworld-data --games 16 --subprocesses 2 8

Plays the reference agents (``random``: 50 steps a game, mostly losses; ``oracle``: a few steps a game)
on the first ``--games`` games of ``--split`` (task types in turn) as the main job's evaluation does
(:func:`alfworld_bridge.evaluation.play_agents`): once with one env in this process, then with each count of
``--subprocesses`` envs stepping side by side (:class:`vlm_policy.subprocess_envs.SubprocessEnvSlots`). The
outcomes must be the same every way (each game reset with its own seed); prints seconds and the ratio.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

from alfworld_bridge.evaluation import evaluation_games, play_agents
from vlm_policy.subprocess_envs import SubprocessEnvSlots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="ALFWorld data folder (default: $ALFWORLD_DATA)")
    parser.add_argument("--split", default="valid_seen")
    parser.add_argument("--games", type=int, default=16)
    parser.add_argument("--agents", nargs="+", default=["random", "oracle"])
    parser.add_argument("--subprocesses", type=int, nargs="+", default=[2, 8])
    args = parser.parse_args(argv)
    games = evaluation_games(args.data, args.split, args.games)
    for agent in args.agents:
        start = time.perf_counter()
        here = play_agents([agent], games)[agent]
        alone = time.perf_counter() - start
        print(f"{agent}: {len(games)} games in this process: {alone:.1f} s "
              f"({sum(o.success for o in here)} won, {sum(o.length for o in here)} steps)", flush=True)
        for n in args.subprocesses:
            start = time.perf_counter()
            there = play_agents([agent], games, slots=partial(SubprocessEnvSlots, n=n))[agent]
            seconds = time.perf_counter() - start
            same = "the same outcomes" if there == here else "OTHER OUTCOMES"
            print(f"{agent}: {n} subprocesses: {seconds:.1f} s, {alone / seconds:.2f}x, {same}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
