"""Registers the tasks with Gymnasium under the reference's ids (``gym_cards/NumberLine-v0``, ...).

Each task is registered with its step limit (``gym.spec(id).max_episode_steps``); ``gym.make`` wraps
the env in ``TimeLimit`` with it, and ``gym.make(id, max_episode_steps=n)`` sets another.
"""

from __future__ import annotations

import importlib

import gymnasium as gym

TASK_IDS: dict[str, str] = {
    "gym_cards/NumberLine-v0": "gym_vlm_cards.tasks.numberline:NumberLineEnv",
    "gym_cards/EZPoints-v0": "gym_vlm_cards.tasks.ezpoints:EZPointsEnv",
    "gym_cards/Points24-v0": "gym_vlm_cards.tasks.points24:Points24Env",
    "gym_cards/Blackjack-v0": "gym_vlm_cards.tasks.blackjack:BlackjackEnv",
}

#: Step limits. NumberLine: twice the line's length (5), enough for any start. EZPoints and Points24:
#: four times the formula limit plus "=", a safety net beyond the reference: our formula limit alone
#: never ends an episode of cards that are not in hand, as they are not written (the reference writes a
#: blank for each, which counts toward its limit). Blackjack: more steps
#: than any hand can take.
STEP_LIMITS: dict[str, int] = {
    "gym_cards/NumberLine-v0": 10,
    "gym_cards/EZPoints-v0": 4 * (5 + 1),
    "gym_cards/Points24-v0": 4 * (20 + 1),
    "gym_cards/Blackjack-v0": 20,
}


def register_tasks() -> None:
    """Registers every task once; calling it again does nothing."""
    for env_id, entry_point in TASK_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=STEP_LIMITS[env_id])


#: The module whose import registers each namespace's envs (ALFWorld's lives in its own package).
REGISTERING_MODULES: dict[str, str] = {"gym_cards/": "gym_vlm_cards", "alfworld/": "alfworld_bridge"}


def resolve_env_id(env_id: str) -> str:
    """The id to make ``env_id``'s env with, its registering module imported: a bare id of this project
    (``gym_cards/...``, ``alfworld/...``; ``gym_vlm_cards:gym_cards/...`` becomes the bare one) or of a
    module imported already, or ``module:id`` for a task of one's own (the module that registers it; kept
    whole, so that a fresh process imports it too). Every command resolves its ``--env`` here, so each
    accepts the same ids. Raises ValueError naming the fix for an id nothing registers."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"an env id is a registered id such as 'gym_cards/NumberLine-v0', got {env_id!r}")
    given, _, name = env_id.rpartition(":")
    module = given
    if not module:
        module = next((m for prefix, m in REGISTERING_MODULES.items() if name.startswith(prefix)), "")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"env id {env_id!r}: its module {module!r} cannot be imported ({error}); install it or "
                             "put it on PYTHONPATH") from None
    if name not in gym.registry:
        ours = sorted(i for i in gym.registry if i.startswith(tuple(REGISTERING_MODULES)))
        raise ValueError(f"unknown env id {env_id!r}: this package's are {', '.join(ours)}; a task of your own is "
                         "named 'module:id', the module being the one that registers it")
    return env_id if given and given not in REGISTERING_MODULES.values() else name


def importable_id(env_id: str) -> str:
    """``module:env_id`` for this project's envs, so that ``gym.make`` registers them itself in a fresh
    process (SB3's SubprocVecEnv workers import nothing of ours before making the env)."""
    for prefix, module in REGISTERING_MODULES.items():
        if env_id.startswith(prefix):
            return f"{module}:{env_id}"
    return env_id


#: The step limit the training commands give a task registered without one: a policy whose answers never
#: end an episode (an untrained model's invalid ones) would otherwise play a validation episode forever.
FALLBACK_STEP_LIMIT = 50


def registered_step_limit(env_id: str) -> int | None:
    """The ``max_episode_steps`` the task is registered with (None: no step limit)."""
    return gym.spec(registered_id(env_id)).max_episode_steps


def registered_id(env_id: str) -> str:
    """The id under which ``env_id`` is registered: ``module:name`` without its module."""
    return env_id.rpartition(":")[2]
