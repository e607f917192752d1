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

from gym_vlm_cards.evaluate import EvalResult
from vlm_policy.env_bridge import TokenActionWrapper, frame_kwargs, wrapper_for


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
                     env_kwargs: dict[str, Any] | None = None) -> Callable[[], TokenActionWrapper]:
    """A function making one evaluation env for ``model``: frames at its image size, its tokenizer."""
    wrap, processor = wrapper_for(model, max_new_tokens, prompt_style)
    kwargs = frame_kwargs(env_id, processor, env_kwargs)

    def make() -> TokenActionWrapper:
        return wrap(gym.make(env_id, **kwargs))

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
    episode_ends: list[tuple[int, dict[str, Any], float, int]] | None = None,
    end_loops: bool = False,
) -> tuple[EvalResult, EpisodeRecord | None]:
    """Plays episodes ``seed .. seed+episodes-1`` (episode i reset with seed + i), ``parallel`` at a time.

    ``make_env`` builds one TokenActionWrapper env. Returns the summary and, with ``record_first``, the
    frames and answers of the first episode.

    :param reset_options: episode i's ``reset`` options (ALFWorld: ``{"game": i}``, each game once).
    :param episode_ends: a list to which each episode's (index, final info, return, length) is added.
    :param end_loops: with greedy answers, end an episode as lost as soon as its env's state comes back
        (:meth:`gym_vlm_cards.text_env.TextActionEnv.loop_key`; tasks whose steps draw are played out): it
        would loop to its step limit. The success rate is the one of playing it out; the return and length
        stop short, so this is for checks that read the success rate alone.
    """
    if end_loops and not deterministic:
        raise ValueError("end_loops needs greedy answers: a sampled answer can leave a state met before")
    envs = [make_env() for _ in range(min(parallel, episodes))]
    next_episode = 0
    slots: list[dict[str, Any] | None] = [None] * len(envs)
    totals = {"success": 0, "return": 0.0, "invalid": 0, "steps": 0, "done": 0}
    record = EpisodeRecord() if record_first else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, desc=f"eval {name}", unit="ep", leave=False)

    def remember_state(slot: int) -> bool:
        """Whether the slot's env is back in a state of this episode (then in a loop); always False unless
        ``end_loops``, and for tasks whose steps draw."""
        key = getattr(envs[slot].unwrapped, "loop_key", lambda: None)() if end_loops else None
        if key is None:
            return False
        seen = slots[slot]["seen"]
        looped = key in seen
        seen.add(key)
        return looped

    def start(slot: int) -> None:
        nonlocal next_episode
        options = reset_options(next_episode) if reset_options else None
        obs, _ = envs[slot].reset(seed=seed + next_episode, options=options)
        slots[slot] = {"obs": obs, "episode": next_episode, "return": 0.0, "length": 0, "seen": set()}
        remember_state(slot)
        if record is not None and next_episode == 0:
            record.frames.append(obs["image"])
        next_episode += 1

    for slot in range(len(envs)):
        start(slot)
    while any(s is not None for s in slots):
        active = [i for i, s in enumerate(slots) if s is not None]
        tokens = answer_tokens(policy, [slots[i]["obs"] for i in active], deterministic)
        for row, slot in enumerate(active):
            obs, reward, terminated, truncated, info = envs[slot].step(tokens[row])
            state = slots[slot]
            state["return"] += float(reward)
            state["length"] += 1
            totals["return"] += float(reward)
            totals["steps"] += 1
            totals["invalid"] += not info.get("action_is_valid", True)
            if record is not None and state["episode"] == 0:
                record.answers.append(info.get("generated_text", ""))
                record.rewards.append(float(reward))
                record.frames.append(obs["image"])
            state["obs"] = obs
            if not (terminated or truncated) and remember_state(slot):
                truncated = True  # lost: greedy answers would repeat the loop until the step limit
            if terminated or truncated:
                totals["done"] += 1
                totals["success"] += bool(info.get("is_success", False))
                if record is not None and state["episode"] == 0:
                    record.success = bool(info.get("is_success", False))
                if episode_ends is not None:
                    episode_ends.append((state["episode"], info, state["return"], state["length"]))
                if bar is not None:
                    bar.update(1)
                slots[slot] = None
                if next_episode < episodes:
                    start(slot)
    if bar is not None:
        bar.close()
    for env in envs:
        env.close()
    result = EvalResult(
        name=name,
        episodes=episodes,
        success_rate=totals["success"] / episodes,
        mean_return=totals["return"] / episodes,
        invalid_rate=totals["invalid"] / max(totals["steps"], 1),
        mean_length=totals["steps"] / episodes,
    )
    return result, record


def evaluate_vlm_on_games(policy, make_env: Callable[[], gym.Env], games: int, seed: int, name: str = "policy",
                          record_first: bool = False, progress: bool = False, parallel: int = 8):
    """ALFWorld: :func:`evaluate_vlm` playing game ``i`` of the env's list as episode ``i``, each once.

    :return: the summary, the first episode's record (with ``record_first``) and each game's
        :class:`alfworld_bridge.evaluation.Outcome`, in game order.
    """
    from alfworld_bridge.evaluation import Outcome

    ends: list[tuple[int, dict[str, Any], float, int]] = []
    result, record = evaluate_vlm(policy, make_env, games, seed, parallel=parallel, name=name, record_first=record_first,
                                  progress=progress, reset_options=lambda i: {"game": i}, episode_ends=ends)
    outcomes = [Outcome.from_final(info, total, length) for _, info, total, length in sorted(ends, key=lambda e: e[0])]
    return result, record, outcomes
