"""Renders the README's task pictures with the package itself: python docs/render_task_images.py"""

from pathlib import Path

import gymnasium as gym
from PIL import Image

import gym_vlm_cards  # noqa: F401

OUT = Path(__file__).parent / "images"
STATES = {
    "numberline": ("gym_cards/NumberLine-v0", {"current": 1, "target": 4}),
    "ezpoints": ("gym_cards/EZPoints-v0", {"cards": ["H5", "S7"]}),
    "points24": ("gym_cards/Points24-v0", {"cards": ["H8", "S3", "D8", "C3"]}),
    "blackjack": ("gym_cards/Blackjack-v0", {"player": ["HA", "S7"], "dealer": ["DK", "C9"]}),
}

if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for name, (env_id, options) in STATES.items():
        frame, _ = gym.make(env_id, image_size=200).reset(options=options)
        Image.fromarray(frame).save(OUT / f"{name}.png", optimize=True)
        print(f"wrote {OUT / name}.png")
