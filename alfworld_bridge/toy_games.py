"""Six small ALFWorld problems written by this project, one per task type, with walkthroughs.

They need no dataset: ``write_toy_games(folder)`` writes, for each task type, a folder with
``initial_state.pddl`` (a room of two to four receptacles in ALFRED's PDDL domain) and
``traj_data.json`` (task type and targets); the bridge builds the game files from them like any
ALFWorld data. Useful for tests, demos and a quick first PPO run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Thing:
    kind: str  # ALFRED type name without "Type", e.g. "Apple"
    x: int  # quarter-metre grid position, also used to name the location
    z: int
    facing: int = 0

    @property
    def ident(self) -> str:
        """An ALFRED-style id (the demangler turns it into e.g. "apple 1")."""
        def coordinate(value: int) -> str:
            sign = "plus" if value >= 0 else "minus"
            return f"_{sign}_{abs(value) // 4:02d}_dot_{(abs(value) % 4) * 25:02d}"
        if self.kind == "SinkBasin":  # ALFRED names a basin after its sink: Sink|x|y|z|SinkBasin
            return f"Sink_bar_{coordinate(self.x)}_bar__plus_00_dot_90_bar_{coordinate(self.z)}_bar_SinkBasin"
        return f"{self.kind}_bar_{coordinate(self.x)}_bar__plus_00_dot_90_bar_{coordinate(self.z)}"

    @property
    def location(self) -> str:
        def part(value: int) -> str:
            return f"_minus_{abs(value)}" if value < 0 else str(value)
        return f"loc_bar_{part(self.x)}_bar_{part(self.z)}_bar_{self.facing}_bar_45"


@dataclass(frozen=True)
class ToyTask:
    task_type: str
    receptacles: tuple[Thing, ...]
    objects: tuple[tuple[Thing, str], ...]  # (object, kind of the receptacle it starts in)
    params: dict
    properties: tuple[tuple[str, str], ...]  # (predicate, object kind), e.g. ("heatable", "Potato")
    goal: str
    walkthrough: tuple[str, ...]


def _tasks() -> list[ToyTask]:
    counter, table, fridge = Thing("CounterTop", 4, 0, 1), Thing("DiningTable", -4, 4, 3), Thing("Fridge", 0, 8, 0)
    sink, microwave, shelf = Thing("SinkBasin", 4, 6, 1), Thing("Microwave", 0, -4, 2), Thing("Shelf", -4, -2, 3)
    desk, side, bed = Thing("Desk", 4, 2, 1), Thing("SideTable", -4, 0, 3), Thing("Bed", 0, 6, 0)
    place = ("(exists (?r - receptacle) (exists (?o - object) (and (objectType ?o {o}Type) (receptacleType ?r {r}Type)"
             " {extra}(inReceptacle ?o ?r))))")
    return [
        ToyTask("pick_and_place_simple", (counter, table), ((Thing("Apple", 4, 0), "CounterTop"),),
                {"object_target": "Apple", "parent_target": "DiningTable"}, (),
                place.format(o="Apple", r="DiningTable", extra=""),
                ("go to countertop 1", "take apple 1 from countertop 1", "go to diningtable 1",
                 "move apple 1 to diningtable 1")),
        ToyTask("look_at_obj_in_light", (desk, side), ((Thing("Book", 4, 2), "Desk"), (Thing("DeskLamp", -4, 0), "SideTable")),
                {"object_target": "Book", "toggle_target": "DeskLamp"}, (("toggleable", "DeskLamp"),),
                "(exists (?ot - object ?a - agent ?l - location) (and (objectType ?ot DeskLampType) (toggleable ?ot)"
                " (isToggled ?ot) (objectAtLocation ?ot ?l) (atLocation ?a ?l))) (exists (?o - object ?a - agent)"
                " (and (objectType ?o BookType) (holds ?a ?o)))",
                ("go to desk 1", "take book 1 from desk 1", "go to sidetable 1", "use desklamp 1")),
        ToyTask("pick_clean_then_place_in_recep", (counter, sink, shelf), ((Thing("Mug", 4, 0), "CounterTop"),),
                {"object_target": "Mug", "parent_target": "Shelf"}, (("cleanable", "Mug"),),
                place.format(o="Mug", r="Shelf", extra="(cleanable ?o) (isClean ?o) "),
                ("go to countertop 1", "take mug 1 from countertop 1", "go to sinkbasin 1", "clean mug 1 with sinkbasin 1",
                 "go to shelf 1", "move mug 1 to shelf 1")),
        ToyTask("pick_heat_then_place_in_recep", (counter, microwave, table), ((Thing("Potato", 4, 0), "CounterTop"),),
                {"object_target": "Potato", "parent_target": "DiningTable"}, (("heatable", "Potato"),),
                place.format(o="Potato", r="DiningTable", extra="(heatable ?o) (isHot ?o) "),
                ("go to countertop 1", "take potato 1 from countertop 1", "go to microwave 1",
                 "heat potato 1 with microwave 1", "go to diningtable 1", "move potato 1 to diningtable 1")),
        ToyTask("pick_cool_then_place_in_recep", (counter, fridge, table), ((Thing("Tomato", 4, 0), "CounterTop"),),
                {"object_target": "Tomato", "parent_target": "DiningTable"}, (("coolable", "Tomato"),),
                place.format(o="Tomato", r="DiningTable", extra="(coolable ?o) (isCool ?o) "),
                ("go to countertop 1", "take tomato 1 from countertop 1", "go to fridge 1", "cool tomato 1 with fridge 1",
                 "go to diningtable 1", "move tomato 1 to diningtable 1")),
        ToyTask("pick_two_obj_and_place", (desk, bed, shelf), ((Thing("CD", 4, 2), "Desk"), (Thing("CD", 0, 6), "Bed")),
                {"object_target": "CD", "parent_target": "Shelf"}, (),
                "(exists (?r - receptacle) (exists (?o1 - object) (exists (?o2 - object) (and (not (= ?o1 ?o2))"
                " (objectType ?o1 CDType) (objectType ?o2 CDType) (receptacleType ?r ShelfType) (inReceptacle ?o1 ?r)"
                " (inReceptacle ?o2 ?r)))))",
                ("go to desk 1", "take cd 1 from desk 1", "go to shelf 1", "move cd 1 to shelf 1", "go to bed 1",
                 "take cd 2 from bed 1", "go to shelf 1", "move cd 2 to shelf 1")),
    ]


@lru_cache(maxsize=1)
def _domain_types() -> tuple[frozenset, frozenset]:
    """Type constants the ALFRED domain's actions name (they must be declared in every problem)."""
    from alfworld.info import ALFRED_PDDL_PATH

    domain = Path(ALFRED_PDDL_PATH).read_text()
    return (frozenset(re.findall(r"\(objectType \?\w+ (\w+Type)\)", domain)),
            frozenset(re.findall(r"\(receptacleType \?\w+ (\w+Type)\)", domain)))


def problem_pddl(task: ToyTask) -> str:
    """The PDDL problem of a toy task."""
    domain_otypes, domain_rtypes = _domain_types()
    holder = {r.kind: r for r in task.receptacles}
    otypes = sorted(domain_otypes | {o.kind + "Type" for o, _ in task.objects})
    rtypes = sorted(domain_rtypes | {r.kind + "Type" for r in task.receptacles})
    start = "loc_bar_0_bar_0_bar_0_bar_30"
    locations = sorted({start} | {r.location for r in task.receptacles})
    lines = ["(define (problem toy_" + task.task_type + ")", "  (:domain alfred)", "  (:objects", "    agent1 - agent"]
    lines += [f"    {t} - otype" for t in otypes] + [f"    {t} - rtype" for t in rtypes]
    lines += [f"    {o.ident} - object" for o, _ in task.objects]
    lines += [f"    {r.ident} - receptacle" for r in task.receptacles]
    lines += [f"    {loc} - location" for loc in locations] + ["  )", "  (:init", f"    (atLocation agent1 {start})"]
    for r in task.receptacles:
        lines += [f"    (receptacleType {r.ident} {r.kind}Type)", f"    (receptacleAtLocation {r.ident} {r.location})"]
    for o, where in task.objects:
        receptacle = holder[where]
        lines += [f"    (objectType {o.ident} {o.kind}Type)", f"    (inReceptacle {o.ident} {receptacle.ident})",
                  f"    (objectAtLocation {o.ident} {receptacle.location})"]
        if (("toggleable", o.kind)) not in task.properties:
            lines.append(f"    (pickupable {o.ident})")
        for predicate, kind in task.properties:
            if kind == o.kind:
                lines.append(f"    ({predicate} {o.ident})")
        for r in task.receptacles:
            lines.append(f"    (canContain {r.kind}Type {o.kind}Type)")
    lines += ["  )", f"  (:goal (and {task.goal}))", ")"]
    return "\n".join(lines) + "\n"


def write_toy_games(folder: str | Path) -> list[Path]:
    """Writes the six toy problems (``<folder>/<task_type>/trial_toy/``); returns their folders."""
    folder = Path(folder)
    written = []
    for task in _tasks():
        trial = folder / task.task_type / "trial_toy"
        trial.mkdir(parents=True, exist_ok=True)
        (trial / "initial_state.pddl").write_text(problem_pddl(task))
        params = {"object_target": "", "parent_target": "", "toggle_target": "", "mrecep_target": "",
                  "object_sliced": False, **task.params}
        traj = {"task_id": "toy", "task_type": task.task_type, "pddl_params": params, "scene": {},
                "toy_walkthrough": list(task.walkthrough)}
        (trial / "traj_data.json").write_text(json.dumps(traj, indent=1))
        written.append(trial)
    return written


def walkthrough(game_file: str | Path) -> list[str]:
    """The known solution of a toy game (stored beside it in traj_data.json)."""
    traj = json.loads((Path(game_file).parent / "traj_data.json").read_text())
    return list(traj["toy_walkthrough"])
