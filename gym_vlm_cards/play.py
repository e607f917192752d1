"""Play a task yourself: the game opens in a pygame window and you type actions in the terminal.

    python -m gym_vlm_cards.play gym_cards/Points24-v0 --seed 3

Type a legal action ("+", "hit", "7", ...) or a whole JSON answer as a model would write it.
``--no-window`` plays in the terminal alone, from the text description of the state.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

import gymnasium as gym

import gym_vlm_cards  # noqa: F401  (registers the tasks)
from gym_vlm_cards.agents import task_of


def as_answer(typed: str) -> str:
    """A bare action becomes the JSON answer the parser expects; JSON is passed through."""
    typed = typed.strip()
    return typed if "action" in typed.lower() else json.dumps({"action": typed})


def play(env_id: str, seed: int | None, window: bool, read: Callable[[str], str] = input) -> float:
    """One episode, actions read with ``read``; returns the total reward."""
    env = gym.make(env_id, render_mode="human" if window else None)
    task = task_of(env)
    _, info = env.reset(seed=seed)
    total, done = 0.0, False
    if not task.actions_change:
        print(f"Legal actions: {' '.join(task.legal_actions)}")
    while not done:
        print(info["text_state"])
        if task.actions_change:  # ALFWorld: the commands admissible now
            print(f"Legal actions now: {' | '.join(task.available_actions())}")
        try:
            typed = read("action> ")
        except EOFError:
            break
        if typed.strip().lower() in {"q", "quit", "exit"}:
            break
        _, reward, terminated, truncated, info = env.step(as_answer(typed))
        total += reward
        note = "" if info["action_is_valid"] else " (not a legal action)"
        print(f"reward {reward:+g}{note}")
        done = terminated or truncated
    if done:
        print(info["text_state"])
        print(f"Episode over: {'won' if info.get('is_success') else 'not won'}, total reward {total:+g}")
    env.close()
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env", help="a registered task id, e.g. gym_cards/NumberLine-v0")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-window", action="store_true", help="play in the terminal only")
    args = parser.parse_args(argv)
    if args.env not in gym.registry:
        parser.error(f"unknown env id {args.env!r}")
    play(args.env, args.seed, window=not args.no_window)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
