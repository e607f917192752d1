"""Images for ALFWorld's text engine: the observation text, or a top-down map sketch.

The paper fed THOR's first-person frames to the model; the text engine has no camera, so these
images are honest stand-ins, and scores with them are not comparable with the paper's.

* ``text``: the task and the last observation, drawn legibly (what a text agent reads, as pixels);
* ``map``: the room from above, from ALFWorld's shipped scene layouts: walkable floor, the
  receptacles by name, the agent, and what it holds - never what is inside a receptacle.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from gym_vlm_cards.rendering import BLACK, Canvas, font, wrap_text

MAP_FLOOR = (225, 225, 225)
MAP_RECEPTACLE = (40, 90, 170)
MAP_AGENT = (200, 30, 30)
GRID_METRES = 0.25  # ALFWorld location names count in quarter metres
_LOCATION = re.compile(r"loc_bar_(_minus_)?(\d+)_bar_(_minus_)?(\d+)_bar_(\d+)")


def draw_text_view(canvas: Canvas, task: str, observation: str) -> None:
    """The task on top, the last observation under it, wrapped to the frame."""
    margin = max(2, canvas.width // 40)
    size = max(8, canvas.width // 24)
    line_height = int(size * 1.25)
    y = margin
    lines = wrap_text(f"Task: {task}", size, canvas.width - 2 * margin) + [""]
    lines += wrap_text(observation.strip(), size, canvas.width - 2 * margin)
    room = (canvas.height - margin) // line_height
    if len(lines) > room:
        lines = lines[: room - 1] + ["..."]
    for line in lines:
        canvas.text(line, margin, y, size, BLACK)
        y += line_height


def location_xz(location_id: str) -> tuple[float, float, int] | None:
    """(x, z, facing) in metres from an ALFWorld location id such as ``loc_bar_4_bar__minus_3_bar_1_bar_45``."""
    match = _LOCATION.search(location_id)
    if match is None:
        return None
    x = int(match.group(2)) * (-1 if match.group(1) else 1) * GRID_METRES
    z = int(match.group(4)) * (-1 if match.group(3) else 1) * GRID_METRES
    return x, z, int(match.group(5))


@lru_cache(maxsize=32)
def floor_cells(floor_plan: str) -> np.ndarray | None:
    """Walkable (x, z) points of a scene from ``alfworld/gen/layouts`` (None if unknown)."""
    try:
        import alfworld.gen

        path = Path(alfworld.gen.__file__).parent / "layouts" / f"{floor_plan}-layout.npy"
    except ImportError:
        return None
    return np.load(path) if path.is_file() else None


def draw_map_view(canvas: Canvas, task: str, receptacles: dict[str, str], agent_location: str | None,
                  held: list[str], floor_plan: str | None) -> None:
    """Top-down sketch; ``receptacles`` maps a receptacle's name to its location id."""
    margin = max(2, canvas.width // 40)
    size = max(7, canvas.width // 30)
    top = margin + int(size * 1.3) * 2
    bottom = canvas.height - margin - int(size * 1.4)
    canvas.text(_fit(f"Task: {task}", size, canvas.width - 2 * margin), margin, margin, size, BLACK)
    points = {name: location_xz(loc) for name, loc in receptacles.items()}
    agent = location_xz(agent_location) if agent_location else None
    cells = floor_cells(floor_plan) if floor_plan else None
    known = [p for p in points.values() if p is not None] + ([agent] if agent else [])
    if known:
        coords = np.array([(x, z) for x, z, _ in known] + ([tuple(c) for c in cells] if cells is not None else []))
    else:  # a problem without coordinates: receptacles around a circle, the agent in the middle
        coords = None
    area = (margin, top, canvas.width - 2 * margin, bottom - top)

    def to_pixels(x: float, z: float) -> tuple[int, int]:
        (x0, z0), (x1, z1) = coords.min(0), coords.max(0)
        span = max(x1 - x0, z1 - z0, 1e-6)
        px = area[0] + (x - x0) / span * (area[2] - 8)
        pz = area[1] + area[3] - 8 - (z - z0) / span * (area[3] - 8)
        return int(px), int(pz)

    if coords is not None and cells is not None:
        cell = max(2, int(area[2] * GRID_METRES / max(np.ptp(coords[:, 0]), np.ptp(coords[:, 1]), 1e-6)))
        for x, z in cells:
            px, pz = to_pixels(x, z)
            canvas.fill(px, pz, cell, cell, MAP_FLOOR)
    names = sorted(receptacles)
    for index, name in enumerate(names):
        point = points.get(name)
        if coords is not None and point is not None:
            x, z, facing = point
            # The location is where the agent stands to use it; the receptacle is half a metre ahead.
            dx, dz = [(0, 0.5), (0.5, 0), (0, -0.5), (-0.5, 0)][facing % 4]
            px, pz = to_pixels(x + dx, z + dz)
        else:
            angle = 2 * np.pi * index / max(len(names), 1)
            px = int(area[0] + area[2] / 2 + 0.4 * area[2] * np.cos(angle))
            pz = int(area[1] + area[3] / 2 + 0.4 * area[3] * np.sin(angle))
        canvas.fill(px, pz, 4, 4, MAP_RECEPTACLE)
        label_width = int(font(size).getlength(name)) + 2
        label_x = px + 5 if px + 5 + label_width <= canvas.width else px - 1 - label_width
        canvas.text(name, label_x, pz - size // 2, size, MAP_RECEPTACLE)
    if agent is not None and coords is not None:
        px, pz = to_pixels(agent[0], agent[1])
    else:
        px, pz = area[0] + area[2] // 2, area[1] + area[3] // 2
    canvas.fill(px - 3, pz - 3, 7, 7, MAP_AGENT)
    holding = ", ".join(held) if held else "nothing"
    canvas.text(_fit(f"You hold: {holding}", size, canvas.width - 2 * margin), margin, bottom, size, MAP_AGENT)


def _fit(text: str, size: int, width: int) -> str:
    lines = wrap_text(text, size, width)
    return lines[0] + (" ..." if len(lines) > 1 else "")


def floor_plan_of(traj: dict) -> str | None:
    """The scene's layout name (``FloorPlan<n>``), or None when the data names none or names it
    oddly: it becomes a file name under ALFWorld's layouts folder, so nothing else is let through
    (a ``floor_plan`` of ``../../x`` would otherwise read a file outside that folder)."""
    scene = traj.get("scene", {})
    plan = scene.get("floor_plan")
    if not plan and scene.get("scene_num") is not None:
        plan = f"FloorPlan{scene.get('scene_num')}"
    return str(plan) if plan and re.fullmatch(r"FloorPlan\d+(_physics)?", str(plan)) else None
