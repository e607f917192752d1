"""Registers the tasks with Gymnasium under the reference's ids (``gym_cards/NumberLine-v0``, ...).

Each task is registered with its step limit (``gym.spec(id).max_episode_steps``); ``gym.make`` wraps
the env in ``TimeLimit`` with it, and ``gym.make(id, max_episode_steps=n)`` sets another.
"""

from __future__ import annotations

import gymnasium as gym

TASK_IDS: dict[str, str] = {
    "gym_cards/NumberLine-v0": "gym_vlm_cards.tasks.numberline:NumberLineEnv",
    "gym_cards/EZPoints-v0": "gym_vlm_cards.tasks.ezpoints:EZPointsEnv",
    "gym_cards/Points24-v0": "gym_vlm_cards.tasks.points24:Points24Env",
    "gym_cards/Blackjack-v0": "gym_vlm_cards.tasks.blackjack:BlackjackEnv",
}

#: Step limits. NumberLine: twice the line's length (5), enough for any start. EZPoints and Points24:
#: four times the formula limit plus "=", a safety net beyond the reference: our formula limit alone
#: never ends an episode of cards that are not in hand, as they are not written (the reference writes a
#: blank for each, which counts toward its limit). Blackjack: more steps
#: than any hand can take.
STEP_LIMITS: dict[str, int] = {
    "gym_cards/NumberLine-v0": 10,
    "gym_cards/EZPoints-v0": 4 * (5 + 1),
    "gym_cards/Points24-v0": 4 * (20 + 1),
    "gym_cards/Blackjack-v0": 20,
}


def register_tasks() -> None:
    """Registers every task once; calling it again does nothing."""
    for env_id, entry_point in TASK_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=STEP_LIMITS[env_id])
