"""Goal-condition success rate, recomputed from the text engine's facts.

ALFWorld's text engine reports ``won`` but not ``goal_condition_success_rate`` (only the THOR env
computes it). This follows ALFRED's task definitions: a task has a fixed number of conditions and
the rate is the fraction met. E.g. heat-then-place has three: some target object is in a target
receptacle, some target object is hot, and one hot target object is in a target receptacle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

STATE_PREDICATES = {
    "pick_clean_then_place_in_recep": "isclean",
    "pick_heat_then_place_in_recep": "ishot",
    "pick_cool_then_place_in_recep": "iscool",
}
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)


@dataclass(frozen=True)
class Targets:
    """What a task is about, from ``traj_data["pddl_params"]``."""

    task_type: str
    object_type: str
    receptacle_type: str = ""
    toggle_type: str = ""

    @classmethod
    def from_traj_data(cls, traj: dict) -> Targets:
        params = traj.get("pddl_params", {})
        task_type = traj.get("task_type", "")
        if task_type not in TASK_TYPES:
            raise ValueError(f"unsupported ALFWorld task type {task_type!r}; supported: {TASK_TYPES}")
        return cls(task_type, params.get("object_target", ""), params.get("parent_target", ""),
                   params.get("toggle_target", ""))


def _arguments(fact) -> list[str]:
    return [argument.name.strip() for argument in fact.arguments]


def goal_condition_rate(facts: Iterable, targets: Targets) -> float:
    """Fraction of the task's goal conditions that ``facts`` (TextWorld propositions) satisfy."""
    by_name: dict[str, list[list[str]]] = {}
    for fact in facts:
        by_name.setdefault(fact.name.lower(), []).append(_arguments(fact))

    def of_type(predicate: str, type_name: str) -> set[str]:
        wanted = type_name.lower() + "type"
        return {args[0] for args in by_name.get(predicate, []) if len(args) == 2 and args[1].lower() == wanted}

    objects = of_type("objecttype", targets.object_type)
    receptacles = of_type("receptacletype", targets.receptacle_type)
    in_place = {args[0] for args in by_name.get("inreceptacle", []) if args[0] in objects and args[1] in receptacles}
    held = {args[1] for args in by_name.get("holds", []) if len(args) == 2}

    if targets.task_type == "pick_and_place_simple":
        return float(bool(in_place))
    if targets.task_type == "pick_two_obj_and_place":
        return min(len(in_place), 2) / 2
    if targets.task_type == "look_at_obj_in_light":
        lamps = of_type("objecttype", targets.toggle_type)
        lit = {args[0] for name in ("istoggled", "ison") for args in by_name.get(name, [])} & lamps
        return (float(bool(lit)) + float(bool(held & objects))) / 2
    predicate = STATE_PREDICATES[targets.task_type]
    changed = {args[0] for args in by_name.get(predicate, [])} & objects
    return (float(bool(in_place)) + float(bool(changed)) + float(bool(in_place & changed))) / 3
