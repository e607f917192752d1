"""The embedded default model, ``model="tiny"``: a small LLaVA built offline, in well under a second.

No weights or tokenizer can be downloaded here, so the project carries its own default:

* a tokenizer built deterministically from ``assets/tiny_vocab.json`` (every printable ASCII
  character, plus multi-character pieces from the task prompts and answers so that a whole
  chain-of-thought answer is ~20 tokens and, since version 2, each fixed sentence of a task prompt
  one token): a ``tokenizers`` Unigram model wrapped in a ``PreTrainedTokenizerFast`` with a chat
  template;
* a LLaVA-architecture model (CLIP vision tower + Llama language model) from a config, randomly
  initialised from a seed;
* a ``LlavaProcessor`` with the PIL image processor (no torchvision).

It learns the tasks from scratch through SFT (``vlm-cards sft``) and PPO. Real checkpoints go through
the same code from a path (see :mod:`vlm_policy.loading`).

Versions: ``"tiny"`` is the latest (2: a NumberLine PPO forward, prompt with its 64 image tokens
plus the answer, is ~94 tokens against 204 in version 1, which halves the cost of every forward and
backward pass); ``"tiny-v1"``
names the first. Agents saved with version 1 recorded ``model="tiny"``; they are recognised by their
vocabulary size (:func:`tiny_version_for_vocab`) and load as version 1.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN)

# Jinja chat template: USER/ASSISTANT turns, the image placeholder first, as LLaVA-1.5 does.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the embedded model (3.3M parameters with the defaults)."""

    image_size: int = 64  # pixels of the square image the vision tower sees
    patch_size: int = 8  # -> 64 image tokens
    vision_hidden: int = 128
    vision_layers: int = 2
    text_hidden: int = 256
    text_layers: int = 4
    heads: int = 4
    max_positions: int = 1024


LATEST_VERSION = 2
VERSIONS = (1, 2)


@lru_cache(maxsize=len(VERSIONS))
def tiny_vocabulary(version: int = LATEST_VERSION) -> tuple[str, ...]:
    """Special tokens, then printable characters, then the shipped multi-character pieces (version 2
    appends the prompt sentences, so every version-1 id keeps its token)."""
    if version not in VERSIONS:
        raise ValueError(f"the tiny model has versions {VERSIONS}, not {version!r}")
    data = json.loads(resources.files("vlm_policy.models").joinpath("assets/tiny_vocab.json").read_text())
    characters = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = list(SPECIAL_TOKENS) + characters
    for piece in data["pieces"] + (data["prompt_pieces"] if version >= 2 else []):
        if piece not in vocab:
            vocab.append(piece)
    return tuple(vocab)


def tiny_version_for_vocab(vocab_size: int) -> int | None:
    """The tiny version whose vocabulary has ``vocab_size`` tokens (None: none has)."""
    for version in VERSIONS:
        if len(tiny_vocabulary(version)) == vocab_size:
            return version
    return None


def build_tiny_tokenizer(
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
    eos_token: str = "</s>",
    pad_token: str = "<pad>",
    chat_template: str = TINY_CHAT_TEMPLATE,
    image_token: str = IMAGE_TOKEN,
    version: int = LATEST_VERSION,
    bos_token: str = "<s>",
    named_tokens: dict[str, str] | None = None,
):
    """The tiny model's fast tokenizer; identical on every machine (no training, no randomness).

    The special tokens are replaceable so that tiny test models of other families (Qwen2-VL,
    Idefics3, Gemma 3) get their own markers with the same text vocabulary (version 1's: their test
    fixtures and the saved agents made from them predate version 2). ``named_tokens`` gives the
    tokenizer further named special tokens (Gemma 3's processor reads ``boi_token`` and ``eoi_token``).
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = list(special_tokens) + [t for t in tiny_vocabulary(version)[len(SPECIAL_TOKENS):] if t not in special_tokens]
    # Unigram picks the segmentation with the best total score; every token scoring -1 means the
    # fewest tokens win, and any ASCII string stays encodable character by character.
    scored = [(token, -1.0) for token in vocab]
    unk = "<unk>" if "<unk>" in special_tokens else None
    core = Tokenizer(models.Unigram(scored, unk_id=special_tokens.index(unk) if unk else None))
    core.decoder = decoders.Fuse()
    named = {"eos_token": eos_token, "pad_token": pad_token}
    if bos_token in special_tokens:
        named["bos_token"] = bos_token
    if unk:
        named["unk_token"] = unk
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        extra_special_tokens={"image_token": image_token, **(named_tokens or {})},
        padding_side="left",
        clean_up_tokenization_spaces=False,
        **named,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in special_tokens if t not in named.values()]})
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_processor(config: TinyConfig = TinyConfig(), version: int = LATEST_VERSION):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"height": config.image_size, "width": config.image_size},
        crop_size={"height": config.image_size, "width": config.image_size},
        do_center_crop=False,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(version=version),
        patch_size=config.patch_size,
        vision_feature_select_strategy="default",
        chat_template=TINY_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def seeded(seed: int, build):
    """``build()`` with torch's CPU generator seeded, leaving the caller's random state as it was."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return build()
    finally:
        torch.random.set_rng_state(state)


def build_tiny_model(seed: int = 0, config: TinyConfig = TinyConfig(), version: int = LATEST_VERSION):
    """A randomly initialised LLaVA (CLIP + Llama) matching :func:`build_tiny_tokenizer`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vocab_size = len(tiny_vocabulary(version))
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden,
        intermediate_size=4 * config.vision_hidden,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        projection_dim=config.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.text_hidden,
        intermediate_size=2 * config.text_hidden,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=config.max_positions,
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        tie_word_embeddings=True,
        attention_dropout=0.0,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=SPECIAL_TOKENS.index(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        tie_word_embeddings=True,
    )
    llava._attn_implementation = "eager"
    model = seeded(seed, lambda: LlavaForConditionalGeneration(llava))
    model.generation_config.pad_token_id = llava.pad_token_id
    model.generation_config.eos_token_id = llava.eos_token_id
    return model.eval()
