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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gymnasium as gym
import numpy as np
from PIL import Image

import gym_vlm_cards  # noqa: F401  (registers the tasks)
from gym_vlm_cards.agents import task_of

DEMOS_FILE = "demos.jsonl"


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
    """Plays the oracle until ``n_examples`` steps are recorded; returns the JSONL path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    path = out_dir / DEMOS_FILE
    with path.open("w") as handle:
        for index, (record, image) in enumerate(_oracle_steps(env_id, n_examples, seed, chain_of_thought, env_kwargs)):
            name = f"images/{index:06d}.png"
            Image.fromarray(image).save(out_dir / name)
            record["messages"][0]["content"][0]["image"] = name
            handle.write(json.dumps(record) + "\n")
    return path


def _oracle_steps(env_id, n_examples, seed, chain_of_thought, env_kwargs) -> Iterator[tuple[dict, np.ndarray]]:
    env = gym.make(env_id, **(env_kwargs or {}))
    task = task_of(env)
    prompt_key = "prompt" if chain_of_thought else "action_only_prompt"
    produced, episode = 0, 0
    while produced < n_examples:
        image, info = env.reset(seed=seed + episode)
        step, done = 0, False
        while not done and produced < n_examples:
            answer = task.oracle_answer(chain_of_thought=chain_of_thought)
            record = {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "image": None}, {"type": "text", "text": info[prompt_key]}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
                "env_id": env_id,
                "seed": seed + episode,
                "step": step,
                "state": task.symbolic_state(),
            }
            yield record, image
            produced += 1
            image, _, terminated, truncated, info = env.step(answer)
            done = terminated or truncated
            step += 1
        episode += 1
    env.close()


def read_demonstrations(path: str | Path) -> list[Example]:
    """Reads a JSONL written by :func:`write_demonstrations` (images resolved next to it)."""
    path = Path(path)
    if path.is_dir():
        path = path / DEMOS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no demonstrations at {path}; write them with `vlm-cards demos`")
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
            user, assistant = record["messages"][0], record["messages"][1]
            image_item = next(item for item in user["content"] if item["type"] == "image")
            prompt = next(item["text"] for item in user["content"] if item["type"] == "text")
            answer = next(item["text"] for item in assistant["content"] if item["type"] == "text")
        except (ValueError, KeyError, IndexError, StopIteration) as error:
            raise ValueError(f"{path}:{number} is not a chat-messages example with an image: {error!r}") from None
        image = np.asarray(Image.open(path.parent / image_item["image"]).convert("RGB"))
        state = json.dumps(record.get("state", {}), sort_keys=True)
        examples.append(Example(image=image, prompt=prompt, answer=answer, state=state))
    return examples
