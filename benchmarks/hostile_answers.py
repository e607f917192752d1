"""How long the parser and an env step take on hostile model answers (megabytes, repeated keys, deep
brackets). The tests check what these answers parse to; the times are measured here, since a shared
2-core machine makes wall-clock assertions flaky.

    python benchmarks/hostile_answers.py
"""

from __future__ import annotations

import time

import gymnasium as gym

import gym_vlm_cards  # noqa: F401
from gym_vlm_cards.evaluate import format_table
from gym_vlm_cards.parsing import parse_action

BODIES = {
    "1 MB of text, then an action": "x" * 1_000_000 + '{"action": "+"}',
    '100,000 repeated "action": keys': '"action": ' * 100_000,
    "150,000 repeated bare action: keys": "action:" * 150_000,
    "1,000,000 opening braces": "{" * 1_000_000,
    "an unterminated 1 MB string": "'" + "a" * 1_000_000,
    "1,000 nested brackets": '{"a":' + "[" * 1000 + "]" * 1000 + ', "action": "+"}',
}


def main() -> None:
    env = gym.make("gym_cards/NumberLine-v0")
    rows = []
    for name, body in BODIES.items():
        start = time.perf_counter()
        parsed = parse_action(body, ("-", "+"))
        parse_ms = 1000 * (time.perf_counter() - start)
        env.reset(seed=0)
        start = time.perf_counter()
        try:
            env.step(body)
            step = f"{1000 * (time.perf_counter() - start):.1f}"
        except Exception as error:  # the benchmark reports it; tests decide what must hold
            step = f"raised {type(error).__name__}"
        rows.append([name, f"{len(body):,}", repr(parsed), f"{parse_ms:.1f}", step])
    print(format_table(["answer", "chars", "parsed", "parse ms", "env step ms"], rows))


if __name__ == "__main__":
    main()
