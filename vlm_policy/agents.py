"""Loading an SB3 agent zip of a :class:`~vlm_policy.policy.VLMPolicy` without running code from it.

SB3 writes some of an algorithm's attributes into the zip's "data" entry as cloudpickle payloads (the
policy class, the spaces, schedules, buffers); ``PPO.load`` unpickles them, so loading an untrusted zip
with it runs whatever code the payloads hold. :func:`load_agent` reads only the entry's JSON values and
the weights (``torch.load(weights_only=True)``), and rebuilds every pickled field from this package's own
classes and the env it is given. Agents record their base model (or embed it, :func:`embed_base`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlm_policy.checkpoints import atomic_path
from vlm_policy.loading import is_tiny, tiny_source_for_vocab
from vlm_policy.policy import VLMPolicy

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


#: Pickled fields rebuilt from the env / policy rather than unpickled; None: SB3 rebuilds them itself.
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
