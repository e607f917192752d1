"""Checkpoint I/O of a :class:`~vlm_policy.policy.VLMPolicy` and of SFT models.

* Inside SB3's agent zip (``PPO.save`` / ``PPO.load``): for the embedded tiny model, or with
  ``lora_r=0``, every weight (the tiny model's random weights exist nowhere else); for a real base with
  LoRA only what training changes (the adapter and the value head) plus the base's name.
* ``save_pretrained`` / ``load_pretrained``: the peft adapter (or, with ``lora_r=0``, the whole model
  with its processor) and the value head as safetensors, and the policy's settings as JSON; the
  adapter merges into the base with peft's ``merge_and_unload`` for serving elsewhere.
* :func:`save_sft_checkpoint`: a model (LoRA merged in) and processor that ``load_vlm`` reads back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlm_policy.loading import VLMBundle, is_tiny, tiny_source_for_vocab

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


# ---------------------------------------------------------------------------------------------------
# Loading an agent zip without running code from it
#
# SB3 writes some of an algorithm's attributes into the zip's "data" entry as cloudpickle payloads
# (the policy class, the spaces, schedules, buffers); ``PPO.load`` unpickles them, so loading an
# untrusted zip with it runs whatever code the payloads hold. ``load_agent`` reads only the entry's
# JSON values and the weights (``torch.load(weights_only=True)``), and rebuilds every pickled field
# from this package's own classes and the env it is given.

#: Pickled fields rebuilt from the env / policy rather than unpickled; None: SB3 rebuilds them itself.
#: VLMPolicy settings that agents saved by earlier versions may name, with the one value this version
#: still trains with (such an agent loads; one saved with another value is refused).
REMOVED_POLICY_SETTINGS = {"value_input": "prompt"}

def without_removed_settings(policy_kwargs: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A saved agent's policy kwargs less the :data:`REMOVED_POLICY_SETTINGS` it names at their kept value;
    a ValueError when it names one at another value (this version cannot train or play it as it was)."""
    kwargs = dict(policy_kwargs)
    for name, kept in REMOVED_POLICY_SETTINGS.items():
        if name in kwargs and kwargs.pop(name) != kept:
            raise ValueError(f"{path} was trained with {name}={policy_kwargs[name]!r}, a setting this version no "
                             f"longer has (only {kept!r} remains): load it with the version that saved it")
    return kwargs


_NOT_NEEDED_PICKLED = {"_last_obs": None, "_last_episode_starts": None, "_last_original_obs": None,
                       "ep_info_buffer": None, "ep_success_buffer": None, "rollout_buffer_class": None}


def read_agent_data(path: str | Path) -> dict[str, Any]:
    """The JSON ``data`` entry of an SB3 agent zip (its pickled fields are left as they are, unread)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as error:
        raise ValueError(f"{path} is not a readable SB3 agent zip ({type(error).__name__}: {error})") from None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why an agent zip cannot be loaded whole (None: it can)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as error:
        return f"not a readable zip ({error})"
    if broken is not None:
        return f"entry {broken} is corrupt"
    missing = {"data", "policy.pth"} - names
    return f"it lacks {sorted(missing)}" if missing else None


def _is_pickled(value: Any) -> bool:
    return isinstance(value, dict) and ":serialized:" in value


def agent_base(path: str | Path, data: dict[str, Any] | None = None) -> str:
    """The model an agent was trained from: its recorded base if that is at hand, else the base
    embedded in the zip; an error naming what is missing otherwise."""
    data = data if data is not None else read_agent_data(path)
    base = str(data.get("policy_kwargs", {}).get("model", ""))
    if is_tiny(base):
        return tiny_source_for_vocab(base, agent_vocab_size(data))
    if Path(base).is_dir():
        return base
    embedded = _extract_base(Path(path))
    if embedded is not None:
        return embedded
    try:  # a Hugging Face cache id that resolves offline
        from vlm_policy.loading import load_processor

        load_processor(base)
        return base
    except (FileNotFoundError, OSError, ValueError):
        raise FileNotFoundError(
            f"agent {path} was trained from the base model {base!r}, which is not there; put that checkpoint "
            "back at that path (or in the Hugging Face cache) to load the agent") from None


def agent_answer_length(data: dict[str, Any]) -> int:
    """The agent's ``max_new_tokens``, read from its action space's JSON shape (nothing unpickled)."""
    import re

    numbers = re.findall(r"\d+", str(data.get("action_space", {}).get("_shape", "")))
    if len(numbers) != 1:
        raise ValueError("the agent zip records no MultiDiscrete token action space: not a VLMPolicy agent")
    return int(numbers[0])


def agent_vocab_size(data: dict[str, Any]) -> int:
    """The vocabulary the agent's token actions index, read from its action space's JSON ``nvec``."""
    import re

    sizes = set(re.findall(r"\d+", str(data.get("action_space", {}).get("nvec", ""))))
    if len(sizes) != 1:
        raise ValueError("the agent zip records no MultiDiscrete token action space: not a VLMPolicy agent")
    return int(sizes.pop())


EMBEDDED_BASE = "vlm_base/"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def embed_base(agent_zip: str | Path, base_dir: str | Path) -> None:
    """Adds the base model's configuration and processor files (not its weights) to an agent zip
    whose state dict holds every weight, so that the agent loads where the base directory is not."""
    import zipfile

    with zipfile.ZipFile(agent_zip, "a") as archive:
        for file in sorted(Path(base_dir).iterdir()):
            if file.is_file() and not file.name.endswith(_WEIGHT_SUFFIXES):
                archive.write(file, EMBEDDED_BASE + file.name)


def _extract_base(path: Path) -> str | None:
    """The agent's embedded base, extracted once into a cache folder (None if it has none)."""
    import hashlib
    import zipfile

    from vlm_policy.loading import WEIGHTS_ELSEWHERE_FILE

    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.startswith(EMBEDDED_BASE) and n != EMBEDDED_BASE]
        if not names:
            return None
        digest = hashlib.sha256(b"".join(archive.read(n) for n in sorted(names))).hexdigest()[:16]
        folder = Path(os.environ.get("VLM_CARDS_CACHE", Path.home() / ".cache" / "gym-vlm-cards")) / "agent-bases" / digest
        if not (folder / WEIGHTS_ELSEWHERE_FILE).is_file():
            with atomic_path(folder) as temporary:
                temporary.mkdir()
                for name in names:
                    (temporary / Path(name).name).write_bytes(archive.read(name))
                (temporary / WEIGHTS_ELSEWHERE_FILE).write_text(json.dumps({"agent": str(path)}))
    return str(folder)


def env_id_of(env) -> str | None:
    """The registered id of an env or of a VecEnv's first env (None for an env made without gym.make)."""
    from stable_baselines3.common.vec_env import VecEnv

    spec = env.get_attr("spec", indices=[0])[0] if isinstance(env, VecEnv) else getattr(env, "spec", None)
    return getattr(spec, "id", None)


def load_agent(path: str | Path, env, device: str = "auto", allow_other_env: bool = False, **overrides: Any):
    """``PPO.load`` without unpickling anything from the zip (see above).

    :param path: the agent zip.
    :param env: an env (or VecEnv) built for the agent's model and answer length
        (:func:`vlm_policy.make_vlm_vec_env`); its spaces replace the pickled ones.
    :param device: where to load it.
    :param allow_other_env: load an agent that records another task (its ``env_id`` policy setting)
        than the env's; by default that is refused (agents that record none load with any env).
    :param overrides: values for pickled fields needed to keep training, e.g. ``learning_rate`` (a
        schedule) and ``clip_range``; without them the agent acts but trains at learning rate 0.
    :return: the PPO algorithm with its VLMPolicy.
    """
    from stable_baselines3 import PPO

    from vlm_policy.policy import VLMPolicy

    data = read_agent_data(path)
    kwargs = data.get("policy_kwargs")
    if not isinstance(kwargs, dict) or any(_is_pickled(v) for v in kwargs.values()):
        raise ValueError(f"{path}: its policy_kwargs hold pickled objects; only a VLMPolicy agent with plain "
                         "settings loads safely (PPO.load would run the pickled code: use it only on files you trust)")
    kwargs = without_removed_settings(kwargs, path)
    kwargs["model"] = agent_base(path, data)
    module = data.get("policy_class", {}).get("__module__", "") if _is_pickled(data.get("policy_class")) else ""
    if module != "vlm_policy.policy":
        raise ValueError(f"{path} holds no VLMPolicy agent (policy class from {module or 'nowhere'!r})")
    trained_on, playing = kwargs.get("env_id"), env_id_of(env)
    if trained_on and playing and trained_on != playing and not allow_other_env:
        raise ValueError(f"{path} was trained on {trained_on}, not {playing}: play it on its own task, or allow "
                         "another one (allow_other_env=True; `vlm-cards eval --allow-other-env`)")
    answer_length = agent_answer_length(data)
    action_space = getattr(env, "action_space", None)
    if action_space is None or len(getattr(action_space, "nvec", ())) != answer_length:
        raise ValueError(f"the env's token action space does not match the agent's {answer_length}-token answers; "
                         "build it with the agent's model and max_new_tokens")
    # The spaces as SB3 will see the env (it transposes images to channel-first, as it did when saving).
    seen = PPO._wrap_env(env, verbose=0)
    custom: dict[str, Any] = {key: None for key, value in data.items() if _is_pickled(value)}
    custom.update(_NOT_NEEDED_PICKLED)
    custom.update(policy_kwargs=kwargs, policy_class=VLMPolicy, observation_space=seen.observation_space,
                  action_space=seen.action_space,
                  learning_rate=0.0, lr_schedule=lambda _: 0.0, clip_range=0.2)
    custom.update(overrides)
    return PPO.load(path, env=env, device=device, custom_objects=custom)
