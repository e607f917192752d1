"""Checkpoint I/O of a :class:`~vlm_policy.policy.VLMPolicy` and of SFT models.

* Inside SB3's agent zip (``PPO.save`` / ``PPO.load``): for the embedded tiny model, or with
  ``lora_r=0``, every weight (the tiny model's random weights exist nowhere else); for a real base with
  LoRA only what training changes (the adapter and the value head) plus the base's name.
* ``save_pretrained`` / ``load_pretrained``: the peft adapter (or, with ``lora_r=0``, the whole model
  with its processor) and the value head as safetensors, and the policy's settings as JSON; the
  adapter merges into the base with peft's ``merge_and_unload`` for serving elsewhere.
* :func:`save_sft_checkpoint`: a model (LoRA merged in) and processor that ``load_vlm`` reads back.
* Atomic writes (:func:`atomic_path`), so that an interrupted save never leaves a half-written file.

Loading an agent zip without unpickling it is :mod:`vlm_policy.agents`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlm_policy.loading import VLMBundle, is_tiny

if TYPE_CHECKING:
    from vlm_policy.policy import VLMPolicy

VALUE_HEAD_FILE = "value_head.safetensors"
TEMPORARY_MARK = ".partial-"
POLICY_CONFIG_FILE = "vlm_policy.json"
SFT_METADATA_FILE = "training.json"


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yields a temporary path beside ``path``; renames it to ``path`` only if the block succeeds.

    A file or directory is then either whole or absent: a run killed while writing leaves at most a
    ``.partial-`` leftover, never a torn file under the real name (the rename is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{TEMPORARY_MARK}{os.getpid()}-{path.name}")
    remove_path(temporary)
    try:
        yield temporary
        if path.is_dir() and temporary.is_dir():
            remove_path(path)
        os.replace(temporary, path)
    finally:
        remove_path(temporary)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def saves_whole_model(policy: VLMPolicy) -> bool:
    """True when the agent zip must hold every weight (the tiny model, or full fine-tuning)."""
    return is_tiny(policy.model_source) or policy.lora_r == 0


def agent_state(policy: VLMPolicy, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of the policy's state dict ``full`` that an agent zip holds."""
    if saves_whole_model(policy):
        return full
    trainable = {f"vlm.{name}" for name, p in policy.vlm.named_parameters() if p.requires_grad}
    return {k: v for k, v in full.items() if k in trainable or k.startswith("value_head.") or "." not in k}


def save_pretrained(policy: VLMPolicy, directory: str | Path) -> Path:
    """Writes the adapter (or whole model), the value head and the policy's settings to ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if policy.lora_r > 0:
        policy.vlm.save_pretrained(directory / "adapter")
    else:
        policy.vlm.save_pretrained(directory / "model", safe_serialization=True)
        policy.processor.save_pretrained(directory / "model")
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()},
              str(directory / VALUE_HEAD_FILE))
    config = {key: value for key, value in policy._get_constructor_parameters().items()
              if key not in ("observation_space", "action_space", "lr_schedule", "optimizer_class", "optimizer_kwargs")}
    config["value_head_layers"] = list(policy.value_head_layers)
    (directory / POLICY_CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return directory


def load_pretrained(policy: VLMPolicy, directory: str | Path) -> None:
    """Loads what :func:`save_pretrained` wrote into ``policy`` (same base model and LoRA shape)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / VALUE_HEAD_FILE).is_file():
        raise FileNotFoundError(f"{directory} holds no {VALUE_HEAD_FILE}: not a saved VLMPolicy")
    if policy.lora_r > 0:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        result = set_peft_model_state_dict(policy.vlm, load_peft_weights(str(directory / "adapter")))
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"adapter in {directory} does not fit this model: {result.unexpected_keys[:5]}")
    else:
        from transformers import AutoModelForImageTextToText

        trained = AutoModelForImageTextToText.from_pretrained(directory / "model", local_files_only=True)
        policy.vlm.load_state_dict(trained.state_dict())
    policy.value_head.load_state_dict(load_file(str(directory / VALUE_HEAD_FILE)))


def save_sft_checkpoint(bundle: VLMBundle, out_dir: str | Path, metadata: dict[str, Any]) -> Path:
    """Saves model (LoRA merged in) and processor so that ``load_vlm(out_dir)`` reads them back."""
    out_dir = Path(out_dir)
    model = bundle.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_path(out_dir) as temporary:  # a killed save leaves no half-written checkpoint
        model.save_pretrained(temporary, safe_serialization=True)
        bundle.processor.save_pretrained(temporary)
        (temporary / SFT_METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return out_dir
