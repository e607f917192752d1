"""Success rate of a VLM policy on held-out seeds, with batched generation across episodes."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from gym_vlm_cards.evaluate import EpisodeEnd, EvalResult, play_episodes, summarise
from gym_vlm_cards.registration import importable_id
from vlm_policy.defaults import constrain_actions_for
from vlm_policy.env_bridge import TokenActionWrapper, frame_kwargs, wrapper_for

#: How many of an evaluation's first episodes are recorded to find a won and a lost one for the episode strip
#: (their frames are kept until the evaluation ends).
EXAMPLE_CANDIDATES = 16


@dataclass
class EpisodeRecord:
    """Frames and answers of one episode, for the frame strip."""

    frames: list[np.ndarray] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    success: bool = False


@contextlib.contextmanager
def global_rngs_restored() -> Iterator[None]:
    """Python's, NumPy's and torch's global random states as they were once the block ends: a validation
    check run inside training (which loads a policy, seeds and plays) leaves the training's own draws
    exactly as they would have been without it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def standalone_policy(model: str, env: TokenActionWrapper, device: str = "auto", **policy_kwargs: Any):
    """A VLMPolicy outside PPO (for evaluation) on the spaces of ``env``, on ``device``."""
    from vlm_policy.policy import VLMPolicy

    policy = VLMPolicy(env.observation_space, env.action_space, lambda _: 0.0, model=model, device=device,
                       **policy_kwargs)
    policy.set_training_mode(False)
    return policy


def eval_env_factory(env_id: str, model: str, max_new_tokens: int, prompt_style: str = "cot",
                     env_kwargs: dict[str, Any] | None = None, constrain_actions: bool | None = None,
                     inner: Callable[[gym.Env], gym.Env] | None = None) -> Callable[[], TokenActionWrapper]:
    """A function making one evaluation env for ``model``: frames at its image size, its tokenizer; with
    ``constrain_actions`` its observations carry the legal actions (for a policy that decodes only those);
    ``inner`` wraps the task's env under the model's wrapper (DAgger's expert labels). ``constrain_actions``
    None: the task's default (:func:`vlm_policy.defaults.constrain_actions_for`)."""
    if constrain_actions is None:
        constrain_actions = constrain_actions_for(env_id)
    wrap, processor = wrapper_for(model, max_new_tokens, prompt_style, constrain_actions=constrain_actions)
    kwargs = frame_kwargs(env_id, processor, env_kwargs)
    env_id = importable_id(env_id)  # so that a subprocess making the env registers it first

    def make() -> TokenActionWrapper:
        env = gym.make(env_id, **kwargs)
        return wrap(inner(env) if inner is not None else env)

    return make


def answer_tokens(policy, observations: list[dict[str, np.ndarray]], deterministic: bool = True) -> np.ndarray:
    """The policy's answer token ids for a list of TokenActionWrapper observations, in one batch."""
    batch = {key: torch.as_tensor(np.stack([o[key] for o in observations])) for key in observations[0]}
    with torch.no_grad():
        return policy(batch, deterministic=deterministic)[0].cpu().numpy()


def evaluate_vlm(
    policy,
    make_env: Callable[[], gym.Env],
    episodes: int,
    seed: int,
    parallel: int = 8,
    deterministic: bool = True,
    name: str = "policy",
    record_first: bool = False,
    progress: bool = False,
    reset_options: Callable[[int], dict[str, Any]] | None = None,
    episode_ends: list[EpisodeEnd] | None = None,
    end_loops: bool = False,
    examples: dict[bool, EpisodeRecord] | None = None,
    subprocesses: bool = False,
) -> tuple[EvalResult, EpisodeRecord | None]:
    """Plays episodes ``seed .. seed+episodes-1`` (episode i reset with seed + i), ``parallel`` at a time.

    ``make_env`` builds one TokenActionWrapper env. Returns the summary and, with ``record_first``, the
    frames and answers of the first episode.

    :param reset_options: episode i's ``reset`` options (ALFWorld: ``{"game": i}``, each game once).
    :param episode_ends: a list to which each episode's :class:`~gym_vlm_cards.evaluate.EpisodeEnd` is added,
        in episode order.
    :param examples: a dict that receives the first won (key True) and the first lost (False) episode's record
        among the first :data:`EXAMPLE_CANDIDATES` episodes (fewer keys where they all ended alike).
    :param end_loops: with greedy answers, end an episode as lost as soon as its env's state comes back
        (:meth:`gym_vlm_cards.text_env.TextActionEnv.loop_key`; tasks whose steps draw are played out): it
        would loop to its step limit. The success rate is the one of playing it out; the return and length
        stop short, so this is for checks that read the success rate alone.
    :param subprocesses: step the ``parallel`` envs (where more than one) in subprocesses (SB3's
        ``SubprocVecEnv``; ``make_env`` must pickle), for envs whose steps are slow next to the policy's
        answers (ALFWorld's).
    """
    if end_loops and not deterministic:
        raise ValueError("end_loops needs greedy answers: a sampled answer can leave a state met before")
    if end_loops and subprocesses:
        raise ValueError("end_loops reads each env's state, which lives in this process only: play without subprocesses")
    from vlm_policy.subprocess_envs import env_slots

    envs = env_slots(make_env, min(parallel, episodes), subprocesses)
    # Episodes recorded step by step: the first (record_first), or the first few to find a won and a lost one.
    recorded = EXAMPLE_CANDIDATES if examples is not None else int(record_first)
    records = {index: EpisodeRecord() for index in range(min(recorded, episodes))}
    seen: dict[int, set] = {}  # each episode's states so far (with end_loops)

    def watch(index: int, env: gym.Env, obs: dict[str, Any], reward: float | None, info: dict[str, Any]) -> bool:
        if index in records:
            if reward is not None:
                records[index].answers.append(info.get("generated_text", ""))
                records[index].rewards.append(reward)
            records[index].frames.append(obs["image"])
        # Lost once its state comes back: greedy answers would repeat the loop until the step limit
        # (tasks whose steps draw have no loop key and are played out).
        key = getattr(env.unwrapped, "loop_key", lambda: None)() if end_loops else None
        if key is None:
            return False
        states = seen.setdefault(index, set())
        looped = key in states
        states.add(key)
        return looped

    try:
        ends = play_episodes(envs, lambda observations, _: answer_tokens(policy, observations, deterministic), episodes,
                             seed, reset_options=reset_options, watch=watch, progress=progress, name=name)
    finally:
        envs.close()
    for end in ends:
        if end.index in records:
            records[end.index].success = end.success
            if examples is not None:
                examples.setdefault(end.success, records[end.index])
    if episode_ends is not None:
        episode_ends += ends
    return summarise(name, ends), records.get(0) if record_first else None


def evaluate_vlm_on_games(policy, make_env: Callable[[], gym.Env], games: int, seed: int, name: str = "policy",
                          record_first: bool = False, progress: bool = False, parallel: int = 8,
                          subprocesses: bool = False):
    """ALFWorld: :func:`evaluate_vlm` playing game ``i`` of the env's list as episode ``i``, each once (the
    envs in subprocesses with ``subprocesses``).

    :return: the summary, the first episode's record (with ``record_first``) and each game's
        :class:`alfworld_bridge.evaluation.Outcome`, in game order.
    """
    from alfworld_bridge.evaluation import Outcome

    ends: list[EpisodeEnd] = []
    result, record = evaluate_vlm(policy, make_env, games, seed, parallel=parallel, name=name, record_first=record_first,
                                  progress=progress, reset_options=lambda i: {"game": i}, episode_ends=ends,
                                  subprocesses=subprocesses)
    outcomes = [Outcome.from_end(end) for end in ends]
    return result, record, outcomes
