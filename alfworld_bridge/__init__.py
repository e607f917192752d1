"""alfworld_bridge: ALFWorld household tasks as an image + text-action Gymnasium env (offline).

    import gymnasium as gym
    import alfworld_bridge  # registers alfworld/ALFWorld-v0

    env = gym.make("alfworld/ALFWorld-v0", data_root="path/to/alfworld_data", split="train")

Needs the ``alfworld`` extra (``pip install gym-vlm-cards[alfworld]``); ALFWorld itself is imported
only when the env is made.
"""

import gymnasium as gym

ENV_ID = "alfworld/ALFWorld-v0"
#: The paper's step limit for ALFWorld; ``gym.make(ENV_ID, max_episode_steps=n)`` sets another.
STEP_LIMIT = 50

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="alfworld_bridge.env:ALFWorldEnv", max_episode_steps=STEP_LIMIT)

__all__ = ["ENV_ID", "STEP_LIMIT"]
