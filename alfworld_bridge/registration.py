"""Registers ALFWorld with Gymnasium as ``alfworld/ALFWorld-v0``, with the paper's step limit.

``gym.make`` wraps the env in ``TimeLimit`` with it; ``gym.make(ENV_ID, max_episode_steps=n)`` sets another.
"""

from __future__ import annotations

import gymnasium as gym

ENV_ID = "alfworld/ALFWorld-v0"
#: The paper's step limit for ALFWorld.
STEP_LIMIT = 50


def register_env() -> None:
    """Registers the env once; calling it again does nothing."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="alfworld_bridge.env:ALFWorldEnv", max_episode_steps=STEP_LIMIT)
