"""Registers the tasks with Gymnasium under the reference's ids (``gym_cards/NumberLine-v0``, ...)."""

from __future__ import annotations

import gymnasium as gym

TASK_IDS: dict[str, str] = {
    "gym_cards/NumberLine-v0": "gym_vlm_cards.tasks.numberline:NumberLineEnv",
    "gym_cards/EZPoints-v0": "gym_vlm_cards.tasks.ezpoints:EZPointsEnv",
    "gym_cards/Points24-v0": "gym_vlm_cards.tasks.points24:Points24Env",
    "gym_cards/Blackjack-v0": "gym_vlm_cards.tasks.blackjack:BlackjackEnv",
}


def register_tasks() -> None:
    """Registers every task once; calling it again does nothing."""
    for env_id, entry_point in TASK_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)
