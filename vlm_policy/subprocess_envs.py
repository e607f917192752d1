"""Envs of an evaluation stepped in subprocesses, so that an env whose steps are slow (ALFWorld: a reset
loads a game, about 2 s, a step about 60 ms) uses every core while the policy answers in this process.

The processes are SB3's :class:`~stable_baselines3.common.vec_env.SubprocVecEnv`, as PPO's envs. An
evaluation decides when each env resets and with which seed and game, which a vec env's own resets (at
once, unseeded, when an episode ends) do not allow: each env runs under :class:`CommandedEnv`, whose
``step`` takes a command (reset with a seed and options, step with an action, or wait) and never reports an
end to SB3, so the vec env never resets on its own; the command's outcome comes back in the info.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym

from gym_vlm_cards.evaluate import EnvSlots

#: The info key :class:`CommandedEnv` answers in.
OUTCOME = "command_outcome"

#: What an env subprocess imports before it makes its env (SB3's worker imports torch; the env wrapper's
#: tokenizer unpickles through transformers' processors; ALFWorld's engine is TextWorld's). SubprocVecEnv starts
#: its processes from multiprocessing's fork server where there is one: that server imports these once, and
#: each process forks from it with them loaded (here a SubprocVecEnv of 2 started in 0.03 s instead of 2.3 s).
#: A module that is not installed is passed over.
SUBPROCESS_PRELOAD = ("stable_baselines3.common.vec_env.subproc_vec_env", "vlm_policy.env_bridge", "gym_vlm_cards",
                      "alfworld_bridge", "transformers.processing_utils", "textworld",
                      "alfworld.agents.environment.alfred_tw_env")


def preload_in_subprocesses() -> None:
    """Has the fork server import :data:`SUBPROCESS_PRELOAD` (call before the first SubprocVecEnv of the
    process; later calls change nothing once the server runs)."""
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.get_context("forkserver").set_forkserver_preload(list(SUBPROCESS_PRELOAD))


class CommandedEnv(gym.Wrapper):
    """An env driven by commands through ``step``: ``("reset", seed, options)``, ``("step", action)`` or
    ``None`` (wait: nothing happens, the last observation comes back). Reports no episode end itself; the
    command's outcome is ``info[OUTCOME]``: ``(info,)`` for a reset, ``(reward, terminated, truncated, info)``
    for a step, ``None`` for a wait."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._last: Any = None

    def step(self, command):
        if command is None:  # an env with no episode left: any observation of its space will do
            last = self.observation_space.sample() if self._last is None else self._last
            return last, 0.0, False, False, {OUTCOME: None}
        if command[0] == "reset":
            self._last, info = self.env.reset(seed=command[1], options=command[2])
            return self._last, 0.0, False, False, {OUTCOME: (info,)}
        self._last, reward, terminated, truncated, info = self.env.step(command[1])
        return self._last, float(reward), False, False, {OUTCOME: (float(reward), terminated, truncated, info)}


class SubprocessEnvSlots(EnvSlots):
    """:class:`~gym_vlm_cards.evaluate.EnvSlots` whose envs live in ``n`` subprocesses, each made by
    ``make_env`` there (which must pickle with cloudpickle, as SB3's env functions), stepped at once."""

    def __init__(self, make_env: Callable[[], gym.Env], n: int) -> None:
        from stable_baselines3.common.vec_env import SubprocVecEnv

        preload_in_subprocesses()
        super().__init__([])
        self.vec_env = SubprocVecEnv([lambda: CommandedEnv(make_env()) for _ in range(n)])

    def __len__(self) -> int:
        return self.vec_env.num_envs

    def env(self, slot: int) -> None:
        return None

    def _run(self, commands: dict[int, Any]) -> dict[int, tuple[Any, tuple]]:
        observations, _, _, infos = self.vec_env.step([commands.get(slot) for slot in range(len(self))])
        if isinstance(observations, dict):
            return {slot: ({key: value[slot] for key, value in observations.items()}, infos[slot][OUTCOME])
                    for slot in commands}
        return {slot: (observations[slot], infos[slot][OUTCOME]) for slot in commands}

    def reset(self, requests):
        commands = {slot: ("reset", seed, options) for slot, (seed, options) in requests.items()}
        return {slot: (obs, outcome[0]) for slot, (obs, outcome) in self._run(commands).items()}

    def step(self, actions):
        return {slot: (obs, *outcome) for slot, (obs, outcome) in self._run(
            {slot: ("step", action) for slot, action in actions.items()}).items()}

    def close(self) -> None:
        self.vec_env.close()


def env_slots(make_env: Callable[[], gym.Env], n: int, subprocesses: bool = True) -> EnvSlots:
    """``n`` envs made by ``make_env`` for an episode loop: in subprocesses with ``subprocesses`` where there is
    more than one (one env alone steps no faster elsewhere), else in this process."""
    if subprocesses and n > 1:
        return SubprocessEnvSlots(make_env, n)
    return EnvSlots([make_env() for _ in range(n)])
