"""The four tasks of the RL4VLM paper ("gym_cards"), one module each."""

from gym_vlm_cards.tasks.blackjack import BlackjackEnv
from gym_vlm_cards.tasks.ezpoints import EZPointsEnv
from gym_vlm_cards.tasks.numberline import NumberLineEnv
from gym_vlm_cards.tasks.points24 import Points24Env

__all__ = ["BlackjackEnv", "EZPointsEnv", "NumberLineEnv", "Points24Env"]
