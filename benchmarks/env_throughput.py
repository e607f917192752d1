"""Steps per second of every task with random text answers, resets included, in one process.

    python benchmarks/env_throughput.py [--steps 20000]

Prints a table beside the reference gym_cards figures measured on this machine kind (2 cores,
../shared/reference-figures.md) and the floor of copying one 300x300x3 frame.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np

import gym_vlm_cards
from gym_vlm_cards.evaluate import format_table

REFERENCE_STEPS_PER_S = {
    "gym_cards/NumberLine-v0": 1294,
    "gym_cards/EZPoints-v0": 87,
    "gym_cards/Points24-v0": 96,
    "gym_cards/Blackjack-v0": 15,
}


def measure(env_id: str, steps: int, seed: int = 0) -> tuple[float, float, float]:
    """(steps/s with resets, median step ms, median reset ms) with uniformly random legal answers."""
    env = gym.make(env_id)
    legal = env.unwrapped.legal_actions
    answers = [json.dumps({"thoughts": "random", "action": a}) for a in legal]
    picks = np.random.default_rng(seed).integers(len(answers), size=steps)
    step_times, reset_times = [], []
    env.reset(seed=seed)
    start = time.perf_counter()
    for pick in picks:
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(answers[pick])
        t1 = time.perf_counter()
        step_times.append(t1 - t0)
        if terminated or truncated:
            env.reset()
            reset_times.append(time.perf_counter() - t1)
    elapsed = time.perf_counter() - start
    return steps / elapsed, 1e3 * float(np.median(step_times)), 1e3 * float(np.median(reset_times or [0.0]))


def frame_copy_floor_us(repeats: int = 20000) -> float:
    frame = np.zeros((300, 300, 3), dtype=np.uint8)
    start = time.perf_counter()
    for _ in range(repeats):
        frame.copy()
    return 1e6 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20000)
    args = parser.parse_args()
    rows = []
    for env_id in gym_vlm_cards.TASK_IDS:
        rate, step_ms, reset_ms = measure(env_id, args.steps)
        reference = REFERENCE_STEPS_PER_S[env_id]
        rows.append([env_id, f"{rate:,.0f}", f"{step_ms:.3f}", f"{reset_ms:.3f}", f"{reference:,}", f"{rate / reference:,.0f}x"])
    header = ["task", "steps/s", "step median ms", "reset median ms", "reference steps/s", "speed-up"]
    print(format_table(header, rows))
    print(f"floor: copying one 300x300x3 uint8 frame takes {frame_copy_floor_us():.1f} us")


if __name__ == "__main__":
    main()
