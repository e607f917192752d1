"""``vlm-cards play``: watch an agent play, step by step in the terminal and, with ``--record``, as a GIF.

Each GIF frame is what the agent saw (enlarged, pixels kept sharp) with its answer written under it and
the reward it got; the episode's last frame says whether it was won.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlm_policy.training.evaluation import EpisodeRecord, evaluate_vlm

#: The width of a GIF frame in pixels (the picture is enlarged to it, the text wrapped to it).
FRAME_WIDTH = 384
TEXT_LINES = 7


def play_and_show(policy, make_env: Callable, episodes: int, seed: int, record: str | Path | None = None,
                  print_line: Callable[[str], None] = print) -> list[EpisodeRecord]:
    """Plays ``episodes`` episodes (seeds ``seed`` onwards) with greedy answers, printing each step; with ``record``
    writes them all as one GIF. Returns each episode's frames, answers and rewards."""
    played = []
    for episode in range(episodes):
        _, recorded = evaluate_vlm(policy, make_env, 1, seed + episode, parallel=1, record_first=True)
        played.append(recorded)
        print_line(f"episode {episode + 1} (seed {seed + episode}): {'won' if recorded.success else 'not won'}, "
                   f"return {sum(recorded.rewards):+g} in {len(recorded.answers)} steps")
        for step, (answer, reward) in enumerate(zip(recorded.answers, recorded.rewards), start=1):
            print_line(f"  step {step}: reward {reward:+g}  {answer}")
    if record:
        write_gif(played, record)
        print_line(f"wrote {record}")
    return played


def caption_frame(frame: np.ndarray, lines: Sequence[str], font: ImageFont.FreeTypeFont) -> Image.Image:
    """``frame`` enlarged to :data:`FRAME_WIDTH` with ``lines`` of text under it."""
    picture = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    height = round(picture.height * FRAME_WIDTH / picture.width)
    picture = picture.resize((FRAME_WIDTH, height), Image.Resampling.NEAREST)
    line_height = font.size + 4
    canvas = Image.new("RGB", (FRAME_WIDTH, height + line_height * TEXT_LINES + 8), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines[:TEXT_LINES]):
        draw.text((6, height + 4 + i * line_height), line, fill="black", font=font)
    return canvas


def write_gif(played: Sequence[EpisodeRecord], path: str | Path, seconds_per_frame: float = 1.5) -> Path:
    """Every step of every episode as one GIF frame: the frame, the answer, the reward."""
    font = ImageFont.truetype(str(resources.files("gym_vlm_cards").joinpath("fonts/DejaVuSans-Bold.ttf")), 13)
    columns = 52
    frames = []
    for number, episode in enumerate(played, start=1):
        for step, (frame, answer, reward) in enumerate(zip(episode.frames, episode.answers, episode.rewards), start=1):
            text = [f"episode {number}, step {step}: reward {reward:+g}",
                    *textwrap.wrap(answer or "(empty answer)", columns)]
            if len(text) > TEXT_LINES:
                text = [*text[:TEXT_LINES - 1], text[TEXT_LINES - 1][: columns - 3] + "..."]
            frames.append(caption_frame(frame, text, font))
        frames.append(caption_frame(episode.frames[-1], [f"episode {number}: {'won' if episode.success else 'not won'}, "
                                                         f"return {sum(episode.rewards):+g}"], font))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (FRAME_WIDTH, max(f.height for f in frames))
    frames = [f if f.size == size else _padded(f, size) for f in frames]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(seconds_per_frame * 1000), loop=0)
    return path


def _padded(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    canvas = Image.new("RGB", size, "white")
    canvas.paste(image, (0, 0))
    return canvas
