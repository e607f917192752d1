"""gym_vlm_cards: visual decision-making tasks whose actions are written as text.

Importing the package registers the tasks with Gymnasium::

    import gymnasium as gym
    import gym_vlm_cards  # noqa: F401  (registers gym_cards/*)

    env = gym.make("gym_cards/NumberLine-v0")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step('{"thoughts": "...", "action": "+"}')
"""

from gym_vlm_cards.registration import TASK_IDS, register_tasks, resolve_env_id
from gym_vlm_cards.tasks import BlackjackEnv, EZPointsEnv, NumberLineEnv, Points24Env
from gym_vlm_cards.text_env import Outcome, TextActionEnv

__version__ = "0.2.0"
__all__ = [
    "TASK_IDS",
    "BlackjackEnv",
    "EZPointsEnv",
    "NumberLineEnv",
    "Outcome",
    "Points24Env",
    "TextActionEnv",
    "register_tasks",
    "resolve_env_id",
]

register_tasks()
