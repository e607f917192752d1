"""A full-information expert for ALFWorld's six task types, replanned from the game's facts every step.

ALFWorld ships two experts: a hand-coded one that searches receptacles in a fixed order and a PDDL
planner; both explore as if they did not know where things are, and on some games neither finishes
within 50 steps (measured: ``look_at_obj_in_light-Bowl-None-DeskLamp-301`` in valid_seen, whose bowl
both look for past the limit). This expert reads where every object is from the text engine's facts
(``inreceptacle``, ``holds``, ``opened``, ``ishot`` ...), so it walks straight to what the task needs.
It keeps no memory between steps: whatever happened before (its own moves, a model's, random ones),
the next command follows from the current facts alone, so it recovers from any detour.

Each step picks the first unmet subgoal and the command towards it, always one of the admissible
commands: put down an object the task does not need; fetch a target object (go to its receptacle,
open it, take it); for clean / heat / cool, use the sink basin / microwave / fridge; for
look-at-in-light, carry the object to the lamp and switch it on; then go to a target receptacle,
open it if needed, and put the object there (twice for pick-two).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from alfworld_bridge.goals import Facts, Targets

# The appliance each state-changing task uses, and the command verb that changes the state.
APPLIANCES = {
    "pick_clean_then_place_in_recep": ("sinkbasin", "clean", "isclean"),
    "pick_heat_then_place_in_recep": ("microwave", "heat", "ishot"),
    "pick_cool_then_place_in_recep": ("fridge", "cool", "iscool"),
}


def put_commands(thing: str, receptacle: str) -> tuple[str, str]:
    """Putting ``thing`` into ``receptacle`` in both grammars ALFWorld games use ("move ... to" in
    the current one, "put ... in/on" in the released game files)."""
    return f"move {thing} to {receptacle}", f"put {thing} in/on {receptacle}"


class NoExpertMove(RuntimeError):
    """The expert found no admissible command towards the goal (a game it does not cover)."""


def _type_of(state: Facts, thing: str) -> str:
    return next((a[1] for a in state.args("objecttype") if len(a) == 2 and a[0] == thing), "")


def _receptacles_for(state: Facts, thing: str) -> list[str]:
    """Receptacles whose type can hold ``thing``'s type (``cancontain``), sorted."""
    kind = _type_of(state, thing)
    holders = {a[0] for a in state.args("cancontain") if len(a) == 2 and a[1] == kind}
    return sorted(a[0] for a in state.args("receptacletype") if len(a) == 2 and a[1] in holders)


def expert_command(facts: Iterable | Facts, targets: Targets, admissible: Sequence[str]) -> str:
    """The expert's next command, one of ``admissible``; :class:`NoExpertMove` if there is none."""
    state = Facts.of(facts)
    allowed = set(admissible)
    objects = state.of_type("objecttype", targets.object_type)
    receptacles = state.of_type("receptacletype", targets.receptacle_type)
    held = state.holding()
    task = targets.task_type

    def first(*commands: str) -> str | None:
        return next((c for c in commands if c in allowed), None)

    def reach(receptacle: str, *then: str) -> str:
        """The first of ``then`` that is admissible, else open ``receptacle`` or go to it."""
        command = first(*then, f"open {receptacle}", f"go to {receptacle}")
        if command is None:
            raise NoExpertMove(f"cannot reach {receptacle} to '{then[0]}'")
        return command

    def fetch(candidates: Sequence[str]) -> str:
        for thing in candidates:
            container = state.container_of(thing)
            if container is not None:
                return reach(container, f"take {thing} from {container}")
        raise NoExpertMove(f"none of {list(candidates)} lies in a receptacle")

    def place(thing: str, choices: Sequence[str]) -> str:
        for receptacle in choices:
            command = first(*put_commands(thing, receptacle))
            if command:
                return command
        return reach(choices[0], *put_commands(thing, choices[0]))

    # An object the task does not need is put down (one hand only): here if it can be, else in the
    # first receptacle that can hold it.
    unneeded = [thing for thing in held if thing not in objects]
    if unneeded:
        thing = unneeded[0]
        puts = sorted(c for c in allowed if c.startswith(put_commands(thing, "")))
        if puts:
            return puts[0]
        for receptacle in _receptacles_for(state, thing):
            if f"go to {receptacle}" in allowed:
                return reach(receptacle, *put_commands(thing, receptacle))
        # No receptacle listed for its type: try the next receptacle after this one, in name order
        # (the one the agent stands at is the one it cannot "go to").
        everything = sorted(a[0] for a in state.args("receptacletype") if a)
        here = [i for i, r in enumerate(everything) if f"go to {r}" not in allowed]
        start = here[0] + 1 if here else 0
        for receptacle in everything[start:] + everything[:start]:
            if f"go to {receptacle}" in allowed:
                return f"go to {receptacle}"
        raise NoExpertMove(f"cannot put down {thing}")

    if task == "look_at_obj_in_light":
        lamps = state.of_type("objecttype", targets.toggle_type)
        if not held:
            return fetch(objects)
        for lamp in lamps:
            place_of_lamp = state.container_of(lamp)
            use = first(f"use {lamp}")
            if use:
                return use
            if place_of_lamp:
                return reach(place_of_lamp, f"use {lamp}")
        raise NoExpertMove(f"no reachable {targets.toggle_type}")

    if task == "pick_two_obj_and_place":
        placed = [o for o in objects if state.container_of(o) in receptacles]
        # Both in one receptacle: the one already holding a target object, if any.
        choices = sorted({state.container_of(o) for o in placed}) or receptacles
        if held:
            return place(held[0], choices)
        return fetch([o for o in objects if o not in placed])

    if task in APPLIANCES:
        appliance_type, verb, predicate = APPLIANCES[task]
        if not held:
            done = [o for o in objects if state.has(predicate, o)]
            return fetch(done + [o for o in objects if o not in done])
        thing = held[0]
        if not state.has(predicate, thing):
            appliances = state.of_type("receptacletype", appliance_type)
            for appliance in appliances:
                command = first(f"{verb} {thing} with {appliance}")
                if command:
                    return command
            return reach(appliances[0], f"{verb} {thing} with {appliances[0]}")
        return place(thing, receptacles)

    # pick_and_place_simple
    if held:
        return place(held[0], receptacles)
    return fetch([o for o in objects if state.container_of(o) not in receptacles] or objects)
