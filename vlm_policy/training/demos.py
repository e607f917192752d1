"""Demonstrations for SFT: the oracle plays, every step becomes (image, prompt, answer).

The JSONL uses the common chat-messages layout, so other SFT tools can read it too::

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "images/000000.png"},
                                              {"type": "text", "text": "<task prompt>"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "{\\"thoughts\\": ..., \\"action\\": \\"+\\"}"}]}],
     "env_id": "gym_cards/NumberLine-v0", "seed": 12, "step": 0}

Episode ``i`` is reset with ``seed + i``, so the same arguments write the same files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

import gym_vlm_cards  # noqa: F401  (registers the tasks)
from vlm_policy.checkpoints import atomic_path
from vlm_policy.training.run_folder import remove_stale_partials

DEMOS_FILE = "demos.jsonl"
#: Written last into a set's folder: how many examples it holds, so a reader can tell a whole set.
MANIFEST_FILE = "manifest.json"
_SET_CONTENTS = {DEMOS_FILE, MANIFEST_FILE, "images"}


@dataclass(frozen=True)
class Example:
    """One supervised example: what the model sees and what it should answer."""

    image: np.ndarray
    prompt: str
    answer: str
    state: str = ""  # the task's symbolic state as sorted JSON (labels for the vision warm-up)


def write_demonstrations(
    env_id: str,
    n_examples: int,
    out_dir: str | Path,
    seed: int = 0,
    chain_of_thought: bool = True,
    env_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Plays the oracle until ``n_examples`` steps are recorded; returns the JSONL path.

    The set is written under a temporary name and renamed into ``out_dir`` when whole (a killed write
    leaves no set behind, only a ``.partial-`` folder the next run removes); an earlier set there is
    replaced, and a folder holding anything else is refused rather than deleted.
    """
    steps = _oracle_steps(env_id, seed, chain_of_thought, env_kwargs, n_examples)
    return write_example_set(steps, out_dir, {"env_id": env_id, "seed": seed, "chain_of_thought": chain_of_thought})


def write_example_set(steps: Iterable[tuple[dict, np.ndarray]], out_dir: str | Path, about: dict[str, Any]) -> Path:
    """Writes (record, frame) pairs as a set (JSONL, PNG frames, manifest with the count and ``about``);
    returns the JSONL path. Written under a temporary name and renamed when whole (see
    :func:`write_demonstrations`)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= _SET_CONTENTS):
        raise FileExistsError(f"{out_dir} exists and is not a demonstration set; give --out a new or empty folder")
    remove_stale_partials(out_dir.parent, name=out_dir.name)  # what killed writes of this set left behind
    count = 0
    with atomic_path(out_dir) as temporary:
        (temporary / "images").mkdir(parents=True)
        with (temporary / DEMOS_FILE).open("w") as handle:
            for count, (record, image) in enumerate(steps, start=1):
                name = f"images/{count - 1:06d}.png"
                Image.fromarray(image).save(temporary / name)
                record["messages"][0]["content"][0]["image"] = name
                handle.write(json.dumps(record) + "\n")
        (temporary / MANIFEST_FILE).write_text(json.dumps({"examples": count, **about}, indent=2))
    return out_dir / DEMOS_FILE


def example_record(env_id: str, prompt: str, answer: str, state: Any, seed: int | None, step: int) -> dict:
    """One example's chat-messages record (its image path is filled in when written)."""
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": None}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "env_id": env_id,
        "seed": seed,
        "step": step,
        "state": state,
    }


def _oracle_steps(env_id, seed, chain_of_thought, env_kwargs, n_examples: int | None = None,
                  n_episodes: int | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """The oracle's steps, episode ``i`` reset with ``seed + i``: ``n_examples`` steps, or every step of
    ``n_episodes`` whole episodes."""
    if n_examples is None:
        n_examples = float("inf")
    env = gym.make(env_id, **(env_kwargs or {}))
    task = env.unwrapped  # a card task or ALFWorld: anything with an oracle answer and a symbolic state
    if not (hasattr(task, "oracle_answer") and hasattr(task, "symbolic_state")):
        raise TypeError(f"{env_id} has no oracle (oracle_answer / symbolic_state), so no demonstrations can be recorded")
    prompt_key = "prompt" if chain_of_thought else "action_only_prompt"
    produced, episode = 0, 0
    while produced < n_examples and (n_episodes is None or episode < n_episodes):
        image, info = env.reset(seed=seed + episode)
        step, done = 0, False
        while not done and produced < n_examples:
            answer = task.oracle_answer(chain_of_thought=chain_of_thought)
            yield example_record(env_id, info[prompt_key], answer, task.symbolic_state(), seed + episode, step), image
            produced += 1
            image, _, terminated, truncated, info = env.step(answer)
            done = terminated or truncated
            step += 1
        episode += 1
    env.close()


def _demonstrations_file(path: str | Path) -> Path:
    """The JSONL of a set (its folder or the file itself), refused when the set is not whole.

    A set written by :func:`write_demonstrations` holds a manifest with its example count, which
    must match the lines; a JSONL of another tool must at least end with a whole line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / DEMOS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no demonstrations at {path}; write them with `vlm-cards demos`")
    expected = set_size(path.parent)
    with path.open("rb") as handle:
        lines = sum(1 for _ in handle)
        handle.seek(max(handle.tell() - 1, 0))
        whole_last_line = handle.read(1) in (b"\n", b"")
    if (expected is not None and lines != expected) or not whole_last_line:
        wanted = f"its manifest says {expected}" if expected is not None else "its last line is cut off"
        raise ValueError(f"{path} is incomplete ({lines} lines; {wanted}), likely from a write that was killed: "
                         "write the set again with `vlm-cards demos`")
    return path


def set_size(folder: str | Path) -> int | None:
    """The example count in a set's manifest, or None when the folder has no readable manifest."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    count = manifest.get("examples") if isinstance(manifest, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _records(path: Path) -> Iterator[tuple[dict, str, str, str]]:
    """Each line's record with its image path, prompt and answer; a clear error for a malformed line."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
            user, assistant = record["messages"][0], record["messages"][1]
            image_item = next(item for item in user["content"] if item["type"] == "image")
            prompt = next(item["text"] for item in user["content"] if item["type"] == "text")
            answer = next(item["text"] for item in assistant["content"] if item["type"] == "text")
        except (ValueError, KeyError, IndexError, StopIteration) as error:
            raise ValueError(f"{path}:{number} is not a chat-messages example with an image: {error!r}") from None
        yield record, image_item["image"], prompt, answer


def read_demonstrations(path: str | Path) -> list[Example]:
    """Reads a JSONL written by :func:`write_demonstrations` (images resolved next to it)."""
    path = _demonstrations_file(path)
    examples = []
    for number, (record, image_name, prompt, answer) in enumerate(_records(path), start=1):
        if not (path.parent / image_name).is_file():
            raise FileNotFoundError(f"{path}:{number} names the image {image_name}, which is missing: the set is "
                                    "incomplete; write it again with `vlm-cards demos`")
        image = np.asarray(Image.open(path.parent / image_name).convert("RGB"))
        state = json.dumps(record.get("state", {}), sort_keys=True)
        examples.append(Example(image=image, prompt=prompt, answer=answer, state=state))
    return examples


def read_answers(path: str | Path) -> list[str]:
    """The answers of a demonstrations JSONL, without loading its images."""
    return [answer for _, _, _, answer in _records(_demonstrations_file(path))]


def oracle_answers(env_id: str, n_steps: int = 300, seed: int = 0, chain_of_thought: bool = True,
                   env_kwargs: dict[str, Any] | None = None) -> list[str]:
    """The oracle's answers over ``n_steps`` steps of seeded episodes (nothing written to disk)."""
    steps = _oracle_steps(env_id, seed, chain_of_thought, env_kwargs, n_examples=n_steps)
    return [record["messages"][1]["content"][0]["text"] for record, _ in steps]


def oracle_episode_examples(env_id: str, episodes: int, seed: int, chain_of_thought: bool = True,
                            env_kwargs: dict[str, Any] | None = None) -> list[Example]:
    """Every step of the oracle's episodes ``seed .. seed+episodes-1`` as examples, in memory (SFT's
    validation frames)."""
    steps = _oracle_steps(env_id, seed, chain_of_thought, env_kwargs, n_episodes=episodes)
    return [Example(image=image, prompt=record["messages"][0]["content"][1]["text"],
                    answer=record["messages"][1]["content"][0]["text"], state=json.dumps(record["state"], sort_keys=True))
            for record, image in steps]


#: The fewest new tokens a generated answer is given (every task but Points24 fits in it).
MIN_ANSWER_TOKENS = 40


def longest_answer_tokens(answers: Iterable[str], tokenizer) -> int:
    """Tokens of the longest answer (its end token not counted)."""
    return max((len(tokenizer(a, add_special_tokens=False).input_ids) for a in answers), default=0)


def answer_token_budget(longest: int, floor: int = MIN_ANSWER_TOKENS) -> int:
    """New tokens for answers of up to ``longest`` tokens plus the end token, rounded up to a multiple of 8.

    Why: an answer cut at ``max_new_tokens`` is unparseable, so a budget below the demonstrations'
    longest answer makes a task silently unwinnable (Points24's oracle answers take up to 61 tiny
    tokens, the old fixed default was 40). The rounding leaves a little room for a model's answers
    that run longer than the oracle's.
    """
    return max(int(floor), -(-(longest + 1) // 8) * 8)
