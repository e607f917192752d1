"""The env side of the bridge between text-action envs and SB3's PPO.

SB3 accepts only Box / Discrete / MultiDiscrete / MultiBinary actions, so :class:`TokenActionWrapper`
exposes the generated token ids as ``MultiDiscrete([vocab] * max_new_tokens)`` and decodes them with
the model's tokenizer into the text the task parses. The per-step text the prompt needs (the task
prompt; for ALFWorld the admissible commands too) travels in the observation, as UTF-8 bytes,
beside the image and a fingerprint of the tokenizer that the policy checks against its own.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gym_vlm_cards.registration import importable_id
from vlm_policy.logprobs import answer_text

PROMPT_STYLES = ("cot", "action_only")
DEFAULT_MAX_PROMPT_BYTES = 4096
# Env id namespaces whose envs take ``image_size`` (rendered frames of any size).
IMAGE_SIZE_NAMESPACES = ("gym_cards/", "alfworld/")


def tokenizer_fingerprint(tokenizer) -> int:
    """A 24-bit digest of the vocabulary (exact in float32, which SB3's buffers use)."""
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(repr(vocab).encode()).digest()
    return int.from_bytes(digest[:3], "big")


def end_token_ids(tokenizer, extra: Any = None) -> tuple[int, ...]:
    """The ids that end an answer: the tokenizer's EOS plus any the generation config adds."""
    ids = set()
    for value in (tokenizer.eos_token_id, extra):
        if value is None:
            continue
        ids.update([int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)])
    if not ids:
        raise ValueError("the tokenizer has no end-of-sequence token; set tokenizer.eos_token")
    return tuple(sorted(ids))


def encode_prompt(text: str, max_bytes: int) -> np.ndarray:
    """UTF-8 bytes zero-padded to ``max_bytes``; a longer prompt is an error, never cut silently."""
    data = text.encode("utf-8")
    too_long = (f"the prompt is {len(data)} bytes, more than max_prompt_bytes={max_bytes}; pass a larger "
                "max_prompt_bytes to make_vlm_vec_env")
    if len(data) <= max_bytes and b"\x00" in data:
        raise ValueError("prompts must not contain NUL characters")
    return _zero_padded(data, max_bytes, too_long)


def encode_legal_actions(actions: Sequence[str], max_bytes: int) -> np.ndarray:
    """The actions as a JSON list in UTF-8 bytes, zero-padded to ``max_bytes``; more is an error, never cut."""
    data = json.dumps(list(actions)).encode("utf-8")
    return _zero_padded(data, max_bytes, f"the legal actions take {len(data)} bytes, more than max_legal_bytes="
                                         f"{max_bytes}; pass a larger max_legal_bytes to make_vlm_vec_env")


def _zero_padded(data: bytes, max_bytes: int, too_long: str) -> np.ndarray:
    """``data`` in an observation's fixed-size byte field, zero-padded; longer is the error ``too_long``."""
    if len(data) > max_bytes:
        raise ValueError(too_long)
    buffer = np.zeros(max_bytes, dtype=np.uint8)
    buffer[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return buffer


def fit_prompt(text: str, max_bytes: int, max_tokens: int | None = None, tokenizer=None) -> tuple[str, int]:
    """``text`` cut to ``max_bytes`` UTF-8 bytes and ``max_tokens`` tokens, and how many lines were cut.

    Lines are dropped from the end of the middle: the first line (the task) and the last one (the
    answer format) are kept, and a line saying how many were cut takes the place of the dropped
    ones. For ALFWorld the middle is the list of admissible commands. A prompt whose first and last
    lines alone do not fit is an error.
    """

    def fits(candidate: str) -> bool:
        size = len(candidate.encode("utf-8"))
        if size > max_bytes:
            return False
        # A token spans at least one byte (a few tokenizers add one marker token): short prompts fit untokenized.
        if max_tokens is None or size + 8 <= max_tokens:
            return True
        return len(tokenizer(candidate, add_special_tokens=False).input_ids) <= max_tokens

    if fits(text):
        return text, 0
    lines = text.split("\n")
    head, middle, tail = lines[:1], lines[1:-1], lines[-1:]

    def with_kept(kept: int) -> str:
        cut = len(middle) - kept
        return "\n".join(head + middle[:kept] + [f"({cut} more lines cut to fit the model's context)"] + tail)

    if len(lines) < 3 or not fits(with_kept(0)):
        limit = f"{max_bytes} bytes" + (f" / {max_tokens} tokens" if max_tokens is not None else "")
        raise ValueError(f"the prompt's first and last lines alone do not fit in {limit}; shorten the task's prompt, "
                         "or use a model with a longer context (or pass a larger max_prompt_bytes)")
    low, high = 0, len(middle) - 1  # the most middle lines that fit: binary search, tokenizing ~log2(n) times
    while low < high:
        mid = (low + high + 1) // 2
        if fits(with_kept(mid)):
            low = mid
        else:
            high = mid - 1
    return with_kept(low), len(middle) - low


def input_overhead(processor, image_shape: tuple[int, int]) -> int:
    """Tokens the model's input holds besides the prompt's own: chat markers and the image's tokens."""
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ""}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.new("RGB", (image_shape[1], image_shape[0]))
    return int(processor(text=[text], images=[image], return_tensors="pt")["input_ids"].shape[1])


#: The observation key of the legal actions (:mod:`vlm_policy.legal_actions`), with legal-action decoding.
LEGAL_ACTIONS_KEY = "legal_actions"
#: Room for the legal actions in an observation (ALFWorld's admissible commands take about 2 KB).
DEFAULT_MAX_LEGAL_BYTES = 16_384


def decode_prompt(buffer: np.ndarray) -> str:
    data = np.asarray(buffer).astype(np.uint8).tobytes()
    return data.rstrip(b"\x00").decode("utf-8", errors="replace")


def decode_legal_actions(buffer: np.ndarray) -> list[str]:
    text = decode_prompt(buffer)
    return json.loads(text) if text else []


class TokenActionWrapper(gym.Wrapper):
    """Wraps a text-action env so that actions are token ids and observations carry the prompt.

    Observation: ``Dict(image=Box(H, W, 3, uint8), prompt=Box(uint8 bytes), tokenizer=Box(1,))``.
    Action: ``MultiDiscrete([len(tokenizer)] * max_new_tokens)``, decoded up to the first end token.
    ``info["generated_text"]`` holds the decoded answer.

    Args:
        env: an env with an RGB image observation whose ``info["prompt"]`` (or
            ``info["action_only_prompt"]``) holds the task prompt.
        tokenizer: the model's tokenizer (the policy checks it is the same one).
        max_new_tokens: the longest answer.
        prompt_style: ``"cot"`` (thoughts then action) or ``"action_only"``.
        max_prompt_bytes: room for the prompt in the observation.
        max_prompt_tokens: the most tokens the prompt may take (the model's context less the image,
            the chat markers and the answer); None: no limit.
        max_legal_bytes: room for the legal actions (``env.unwrapped.available_actions()``, a JSON list) in
            the observation's ``legal_actions`` key, for legal-action decoding; 0: no such key.

    A prompt longer than either limit is cut by :func:`fit_prompt` (lines from the end of its middle
    part), never silently: a warning gives the count the first time and whenever more lines are cut
    than before, ``info["prompt_lines_cut"]`` the count at each step, and ``lines_cut`` /
    ``prompts_cut`` the totals.
    """

    def __init__(
        self,
        env: gym.Env,
        tokenizer,
        max_new_tokens: int = 64,
        prompt_style: str = "cot",
        max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES,
        end_ids: tuple[int, ...] | None = None,
        max_prompt_tokens: int | None = None,
        max_legal_bytes: int = 0,
    ) -> None:
        super().__init__(env)
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        image_space = env.observation_space
        if not (isinstance(image_space, spaces.Box) and image_space.dtype == np.uint8 and len(image_space.shape) == 3
                and image_space.shape[-1] == 3):
            raise ValueError(f"the env must observe an RGB uint8 image (H, W, 3), its space is {image_space}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.prompt_key = "prompt" if prompt_style == "cot" else "action_only_prompt"
        self.max_prompt_bytes = int(max_prompt_bytes)
        if max_prompt_tokens is not None and max_prompt_tokens < 1:
            raise ValueError(f"the model's context leaves no room for a prompt (max_prompt_tokens={max_prompt_tokens}); "
                             "lower max_new_tokens or use a model with a longer context")
        self.max_prompt_tokens = max_prompt_tokens
        self.prompts_cut = self.lines_cut = self._most_cut = 0
        self.end_ids = end_ids or end_token_ids(tokenizer)
        fingerprint = tokenizer_fingerprint(tokenizer)
        self.max_legal_bytes = int(max_legal_bytes)
        if self.max_legal_bytes and not hasattr(env.unwrapped, "available_actions"):
            raise ValueError(f"legal-action decoding needs an env with available_actions(), which "
                             f"{type(env.unwrapped).__name__} has not")
        observed = {
            "image": image_space,
            "prompt": spaces.Box(0, 255, (self.max_prompt_bytes,), dtype=np.uint8),
            "tokenizer": spaces.Box(fingerprint, fingerprint, (1,), dtype=np.int64),
        }
        if self.max_legal_bytes:
            observed[LEGAL_ACTIONS_KEY] = spaces.Box(0, 255, (self.max_legal_bytes,), dtype=np.uint8)
        self.observation_space = spaces.Dict(observed)
        self.action_space = spaces.MultiDiscrete([len(tokenizer)] * self.max_new_tokens)
        self._fingerprint = np.array([fingerprint], dtype=np.int64)

    def _observe(self, image: np.ndarray, info: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.prompt_key not in info:
            raise KeyError(f"the env's info has no {self.prompt_key!r}: TokenActionWrapper needs the prompt there")
        text, cut = fit_prompt(info[self.prompt_key], self.max_prompt_bytes, self.max_prompt_tokens, self.tokenizer)
        info["prompt_lines_cut"] = cut
        if cut:
            self.prompts_cut += 1
            self.lines_cut += cut
            if cut > self._most_cut:
                self._most_cut = cut
                warnings.warn(f"a prompt of {self.unwrapped.spec.id if self.unwrapped.spec else 'the env'} was too long "
                              f"for the model ({self.max_prompt_bytes} bytes / {self.max_prompt_tokens} tokens): {cut} "
                              f"lines cut ({self.prompts_cut} prompts cut so far)", stacklevel=2)
        observation = {"image": image, "prompt": encode_prompt(text, self.max_prompt_bytes),
                       "tokenizer": self._fingerprint}
        if self.max_legal_bytes:
            observation[LEGAL_ACTIONS_KEY] = encode_legal_actions(self.env.unwrapped.available_actions(),
                                                                  self.max_legal_bytes)
        return observation

    def decode(self, action: Any) -> str:
        """The text of a token-id action, up to the first end token."""
        tokens = np.asarray(action).reshape(-1)
        if tokens.shape[0] != self.max_new_tokens:
            raise ValueError(f"expected {self.max_new_tokens} token ids, got {tokens.shape[0]}")
        return answer_text(self.tokenizer, np.rint(tokens).astype(np.int64).tolist(), self.end_ids)

    def reset(self, **kwargs: Any):
        image, info = self.env.reset(**kwargs)
        return self._observe(image, info), info

    def step(self, action: Any):
        text = self.decode(action)
        image, reward, terminated, truncated, info = self.env.step(text)
        info["generated_text"] = text
        return self._observe(image, info), reward, terminated, truncated, info


def frame_kwargs(env_id: str, processor, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``env_kwargs`` with frames rendered at the model's image size, for the envs that take ``image_size``
    (gym_cards tasks and ALFWorld), unless ``env_kwargs`` sets it already."""
    from vlm_policy.loading import preferred_image_size

    env_kwargs = dict(env_kwargs or {})
    size = preferred_image_size(processor)
    if size is not None and "image_size" not in env_kwargs and env_id.startswith(IMAGE_SIZE_NAMESPACES):
        env_kwargs["image_size"] = size
    return env_kwargs


def wrapper_for(model: str, max_new_tokens: int, prompt_style: str = "cot",
                max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES, constrain_actions: bool = False,
                max_legal_bytes: int | None = None) -> tuple[Callable[[gym.Env], TokenActionWrapper], Any]:
    """A function wrapping an env for ``model`` (its tokenizer, its end tokens), and the model's processor; with
    ``constrain_actions`` its observations carry the legal actions (in ``max_legal_bytes``, by default
    :data:`DEFAULT_MAX_LEGAL_BYTES`) for ``VLMPolicy(constrain_actions=True)``."""
    from vlm_policy.loading import context_length, generation_end_ids, load_processor

    processor = load_processor(model)
    legal_bytes = (max_legal_bytes or DEFAULT_MAX_LEGAL_BYTES) if constrain_actions else 0
    end_ids = end_token_ids(processor.tokenizer, generation_end_ids(model))
    context = context_length(model)
    overheads: dict[tuple[int, int], int] = {}

    def wrap(env: gym.Env) -> TokenActionWrapper:
        max_prompt_tokens = None
        if context is not None:
            shape = tuple(env.observation_space.shape[:2])
            if shape not in overheads:
                overheads[shape] = input_overhead(processor, shape)
            max_prompt_tokens = context - overheads[shape] - max_new_tokens
        return TokenActionWrapper(env, processor.tokenizer, max_new_tokens, prompt_style, max_prompt_bytes, end_ids,
                                  max_prompt_tokens, legal_bytes)

    return wrap, processor


def make_vlm_vec_env(
    env_id: str | Callable[[], gym.Env],
    n_envs: int = 1,
    model: str = "tiny",
    seed: int | None = None,
    max_new_tokens: int = 64,
    prompt_style: str = "cot",
    env_kwargs: dict[str, Any] | None = None,
    max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES,
    vec_env_cls: Any = None,
    monitor_dir: str | None = None,
    constrain_actions: bool | None = None,
    max_legal_bytes: int | None = None,
):
    """A vectorised env for ``PPO(VLMPolicy, env)``: each copy wrapped in Monitor and TokenActionWrapper.

    ``model`` names the model whose tokenizer decodes the actions (the same string as the policy's
    ``model``); the frames are rendered at the model's image size unless ``env_kwargs`` sets
    ``image_size``. Episode ``i`` of env ``k`` is reproducible from ``seed``. With ``constrain_actions`` the
    observations also carry each step's legal actions (see :func:`wrapper_for`); None: on ALFWorld
    (:func:`vlm_policy.defaults.constrain_actions_for`).
    """
    from stable_baselines3.common.env_util import make_vec_env

    if constrain_actions is None:
        from vlm_policy.defaults import constrain_actions_for

        constrain_actions = isinstance(env_id, str) and constrain_actions_for(env_id)
    wrap, processor = wrapper_for(model, max_new_tokens, prompt_style, max_prompt_bytes, constrain_actions,
                                  max_legal_bytes)
    if isinstance(env_id, str):
        env_kwargs = frame_kwargs(env_id, processor, env_kwargs)
        env_id = importable_id(env_id)
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs, wrapper_class=wrap,
                        vec_env_cls=vec_env_cls, monitor_dir=monitor_dir)
