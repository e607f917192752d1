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


@dataclass
class Facts:
    """The facts of one state (TextWorld propositions), indexed by lower-case predicate; argument
    names as the commands spell them."""

    by_name: dict[str, list[list[str]]]

    @classmethod
    def of(cls, facts: Iterable | Facts) -> Facts:
        """The index of TextWorld propositions (an index already built is returned as it is)."""
        if isinstance(facts, Facts):
            return facts
        by_name: dict[str, list[list[str]]] = {}
        for fact in facts:
            by_name.setdefault(fact.name.lower(), []).append([a.name.strip() for a in fact.arguments])
        return cls(by_name)

    def args(self, predicate: str) -> list[list[str]]:
        return self.by_name.get(predicate, [])

    def of_type(self, predicate: str, type_name: str) -> list[str]:
        """The things whose ``predicate`` (``objecttype`` / ``receptacletype``) is ``type_name``, sorted."""
        wanted = type_name.lower() + "type"
        return sorted({a[0] for a in self.args(predicate) if len(a) == 2 and a[1].lower() == wanted})

    def holding(self) -> list[str]:
        return [a[1] for a in self.args("holds") if len(a) == 2]

    def container_of(self, thing: str) -> str | None:
        return next((a[1] for a in self.args("inreceptacle") if a[0] == thing), None)

    def has(self, predicate: str, thing: str) -> bool:
        return any(a and a[0] == thing for a in self.args(predicate))


def goal_condition_rate(facts: Iterable | Facts, targets: Targets) -> float:
    """Fraction of the task's goal conditions that ``facts`` (TextWorld propositions, or their index) satisfy."""
    state = Facts.of(facts)
    objects = set(state.of_type("objecttype", targets.object_type))
    receptacles = set(state.of_type("receptacletype", targets.receptacle_type))
    in_place = {args[0] for args in state.args("inreceptacle") if args[0] in objects and args[1] in receptacles}
    held = set(state.holding())

    if targets.task_type == "pick_and_place_simple":
        return float(bool(in_place))
    if targets.task_type == "pick_two_obj_and_place":
        return min(len(in_place), 2) / 2
    if targets.task_type == "look_at_obj_in_light":
        lamps = set(state.of_type("objecttype", targets.toggle_type))
        lit = {args[0] for name in ("istoggled", "ison") for args in state.args(name)} & lamps
        return (float(bool(lit)) + float(bool(held & objects))) / 2
    predicate = STATE_PREDICATES[targets.task_type]
    changed = {args[0] for args in state.args(predicate)} & objects
    return (float(bool(in_place)) + float(bool(changed)) + float(bool(in_place & changed))) / 3
