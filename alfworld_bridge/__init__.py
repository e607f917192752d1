"""alfworld_bridge: ALFWorld household tasks as an image + text-action Gymnasium env (offline).

    import gymnasium as gym
    import alfworld_bridge  # registers alfworld/ALFWorld-v0

    env = gym.make("alfworld/ALFWorld-v0", data_root="path/to/alfworld_data", split="train")

Needs the ``alfworld`` extra (``pip install gym-vlm-cards[alfworld]``); ALFWorld itself is imported
only when the env is made.
"""

from alfworld_bridge.registration import ENV_ID, STEP_LIMIT, register_env

register_env()

__all__ = ["ENV_ID", "STEP_LIMIT"]
