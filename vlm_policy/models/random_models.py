"""Randomly initialised models of the supported families, saved as real checkpoints.

Nothing can be downloaded here, yet the loading path for real checkpoints must be exercised: these
builders write small (or, for benchmarks, real-sized) random models of each family to a directory,
with a tokenizer and processor, so that ``load_vlm(path)`` reads them exactly as it would read a
downloaded LLaVA, LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL / Qwen3-VL, Idefics3, SmolVLM2 or Gemma 3 checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from vlm_policy.models.tiny import TinyConfig, build_tiny_model, build_tiny_processor, build_tiny_tokenizer, seeded

# The random models keep the tiny model's first vocabulary: it spells prompts out at roughly a real
# tokenizer's length (~110 tokens for NumberLine), and agents saved from these fixtures stay loadable.
FIXTURE_VOCABULARY = 1

QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}{{ '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
)
IDEFICS3_SPECIAL_TOKENS = ("<pad>", "<s>", "<end_of_utterance>", "<unk>", "<image>", "<fake_token_around_image>",
                           "<global-img>")
IDEFICS3_CHAT_TEMPLATE = (
    "<s>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ ' ' + message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ ' ' + item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


GEMMA3_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                         "<end_of_image>", "<image_soft_token>")
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}{{ '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model{{ '\n' }}{% endif %}"
)
SMOLVLM_SPECIAL_TOKENS = IDEFICS3_SPECIAL_TOKENS + ("<video>",)


def _random_model(model_class, config, seed: int, eos_id: int, pad_id: int, device: str | None = None,
                  dtype: torch.dtype | None = None):
    """A randomly initialised model from ``seed`` whose generation stops at ``eos_id``.

    ``device="cuda"`` / ``dtype=torch.bfloat16`` build a real-sized model where it is fast to
    initialise (a 7B model takes minutes to initialise on a CPU, seconds on a GPU).
    """

    def build():
        previous = torch.get_default_dtype()
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            with torch.device(device or "cpu"):
                return model_class(config)
        finally:
            torch.set_default_dtype(previous)

    if device is not None and torch.device(device).type == "cuda":
        torch.manual_seed(seed)  # seeds the CUDA generators too
        model = build()
    else:
        model = seeded(seed, build)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    return model


def save_random_llava(directory: str | Path, seed: int = 0, config: TinyConfig | None = None) -> Path:
    """The embedded tiny LLaVA written as a checkpoint directory (model + processor)."""
    directory = Path(directory)
    config = config or TinyConfig()
    build_tiny_model(seed=seed, config=config, version=FIXTURE_VOCABULARY).save_pretrained(directory)
    build_tiny_processor(config, version=FIXTURE_VOCABULARY).save_pretrained(directory)
    return directory


@dataclass(frozen=True)
class QwenVLSizes:
    """Sizes of a Qwen2-VL / Qwen2.5-VL (dynamic-resolution vision tower, M-RoPE language model)."""

    text_hidden: int = 64
    text_intermediate: int = 128
    text_layers: int = 2
    text_heads: int = 2
    text_kv_heads: int = 1
    vision_hidden: int = 32
    vision_intermediate: int = 64
    vision_depth: int = 1
    vision_heads: int = 2
    vocab_size: int = 0  # 0: the tokenizer's size


#: Qwen2.5-VL-3B-Instruct's and -7B-Instruct's architectures (36 / 28 layers, 151,936-token vocabulary).
QWEN2_5_VL_3B = QwenVLSizes(text_hidden=2048, text_intermediate=11008, text_layers=36, text_heads=16, text_kv_heads=2,
                            vision_hidden=1280, vision_intermediate=3420, vision_depth=32, vision_heads=16,
                            vocab_size=151936)
QWEN2_5_VL_7B = QwenVLSizes(text_hidden=3584, text_intermediate=18944, text_layers=28, text_heads=28, text_kv_heads=4,
                            vision_hidden=1280, vision_intermediate=3420, vision_depth=32, vision_heads=16,
                            vocab_size=151936)


def save_random_qwen2_vl(directory: str | Path, seed: int = 0, image_size: int = 56, hidden: int = 64,
                         sizes: QwenVLSizes | None = None, version: str = "2", device: str | None = None,
                         dtype: torch.dtype | None = None) -> Path:
    """A random Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``) with its processor; tiny by default."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    sizes = sizes or QwenVLSizes(text_hidden=hidden, text_intermediate=2 * hidden)
    directory = Path(directory)
    tokenizer, ids = _qwen_tokenizer()
    head_dim = sizes.text_hidden // sizes.text_heads
    text = dict(vocab_size=sizes.vocab_size or len(tokenizer), hidden_size=sizes.text_hidden,
                intermediate_size=sizes.text_intermediate, num_hidden_layers=sizes.text_layers,
                num_attention_heads=sizes.text_heads, num_key_value_heads=sizes.text_kv_heads,
                max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], bos_token_id=None)
    if version == "2":
        text["rope_parameters"]["mrope_section"] = [head_dim // 4, head_dim // 8, head_dim // 8]
        vision = dict(depth=sizes.vision_depth, embed_dim=sizes.vision_hidden, hidden_size=sizes.text_hidden,
                      num_heads=sizes.vision_heads, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                      mlp_ratio=max(1, sizes.vision_intermediate // sizes.vision_hidden))
        config_class, model_class = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    elif version == "2.5":
        text["rope_parameters"]["mrope_section"] = [head_dim // 8, head_dim // 8 * 3 // 2, head_dim // 8 * 3 // 2]
        depth = sizes.vision_depth
        vision = dict(depth=depth, hidden_size=sizes.vision_hidden, intermediate_size=sizes.vision_intermediate,
                      num_heads=sizes.vision_heads, out_hidden_size=sizes.text_hidden, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[i for i in range(depth) if i % 8 == 7] or [depth - 1])
        config_class, model_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    else:
        raise ValueError(f"version must be '2' or '2.5', got {version!r}")
    config = config_class(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = _random_model(model_class, config, seed, ids["<|im_end|>"], ids["<|endoftext|>"], device, dtype)
    return _save_qwen(directory, model, tokenizer, image_size, patch=14)


def _qwen_tokenizer():
    """The tiny vocabulary with Qwen's special tokens and chat template, and those tokens' ids."""
    tokenizer = build_tiny_tokenizer(QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                     chat_template=QWEN_CHAT_TEMPLATE, image_token="<|image_pad|>",
                                     version=FIXTURE_VOCABULARY)
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}


def _save_qwen(directory: Path, model, tokenizer, image_size: int, patch: int) -> Path:
    """A Qwen-VL model, its tokenizer and an image processor that sees every frame at ``image_size`` pixels square."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=patch, merge_size=2,
                                               temporal_patch_size=2)
    model.save_pretrained(directory)
    image_processor.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_random_idefics3(directory: str | Path, seed: int = 0, image_size: int = 32, hidden: int = 64) -> Path:
    """A tiny random Idefics3 (the SmolVLM family) with its processor, image splitting off."""
    return _save_random_idefics3_like(directory, seed, image_size, hidden, smolvlm=False)


def save_random_smolvlm(directory: str | Path, seed: int = 0, image_size: int = 32, hidden: int = 64) -> Path:
    """A tiny random SmolVLM2 (Idefics3's architecture under its own model type), image splitting off."""
    return _save_random_idefics3_like(directory, seed, image_size, hidden, smolvlm=True)


def _save_random_idefics3_like(directory: str | Path, seed: int, image_size: int, hidden: int, smolvlm: bool) -> Path:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    from vlm_policy.loading import smolvlm_image_processor_class

    directory = Path(directory)
    special = SMOLVLM_SPECIAL_TOKENS if smolvlm else IDEFICS3_SPECIAL_TOKENS
    tokenizer = build_tiny_tokenizer(special, eos_token="<end_of_utterance>", pad_token="<pad>",
                                     chat_template=IDEFICS3_CHAT_TEMPLATE, image_token="<image>",
                                     version=FIXTURE_VOCABULARY)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    patch, scale = 8, 2
    config = (SmolVLMConfig if smolvlm else Idefics3Config)(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"], eos_token_id=ids["<end_of_utterance>"]),
        image_token_id=ids["<image>"], scale_factor=scale,
    )
    model_class = SmolVLMForConditionalGeneration if smolvlm else Idefics3ForConditionalGeneration
    model = _random_model(model_class, config, seed, ids["<end_of_utterance>"], ids["<pad>"])
    image_processor = (SmolVLMImageProcessorPil if smolvlm else Idefics3ImageProcessorPil)(
        do_image_splitting=False, size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size})
    processor_class = smolvlm_image_processor_class() if smolvlm else Idefics3Processor
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_len=(image_size // patch) ** 2 // scale**2, chat_template=IDEFICS3_CHAT_TEMPLATE)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def save_random_qwen3_vl(directory: str | Path, seed: int = 0, image_size: int = 64, hidden: int = 64) -> Path:
    """A tiny random Qwen3-VL (DeepStack vision features, interleaved M-RoPE) with its processor."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    directory = Path(directory)
    tokenizer, ids = _qwen_tokenizer()
    heads, head_dim, patch = 2, hidden // 2, 16
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                num_attention_heads=heads, num_key_value_heads=1, head_dim=head_dim, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_interleaved": True,
                                 "mrope_section": [head_dim // 4, head_dim // 8 * 3 // 2, head_dim // 8 * 3 // 2]},
                pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], bos_token_id=None)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden, patch_size=patch,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=(image_size // patch) ** 2,
                  deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    model = _random_model(Qwen3VLForConditionalGeneration, config, seed, ids["<|im_end|>"], ids["<|endoftext|>"])
    return _save_qwen(directory, model, tokenizer, image_size, patch=patch)


def save_random_gemma3(directory: str | Path, seed: int = 0, image_size: int = 32, hidden: int = 64) -> Path:
    """A tiny random Gemma 3 (SigLIP tower, pooled to 4 image tokens; sliding and global attention layers)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer(GEMMA3_SPECIAL_TOKENS, eos_token="<end_of_turn>", pad_token="<pad>",
                                     chat_template=GEMMA3_CHAT_TEMPLATE, image_token="<image_soft_token>",
                                     version=FIXTURE_VOCABULARY, bos_token="<bos>",
                                     named_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA3_SPECIAL_TOKENS}
    image_tokens = 4
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2, sliding_window=16,
                         layer_types=["sliding_attention", "full_attention"], max_position_embeddings=32768,
                         pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"], eos_token_id=ids["<end_of_turn>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        mm_tokens_per_image=image_tokens, boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"], tie_word_embeddings=True,
    )
    model = _random_model(Gemma3ForConditionalGeneration, config, seed, ids["<end_of_turn>"], ids["<pad>"])
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA3_CHAT_TEMPLATE,
                                image_seq_length=image_tokens)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@dataclass(frozen=True)
class LlavaNextSizes:
    """Sizes of a LLaVA-NeXT (CLIP tower with anyres tiling + Mistral / Llama language model)."""

    vision_hidden: int = 32
    vision_intermediate: int = 64
    vision_layers: int = 1
    vision_heads: int = 2
    image_size: int = 42
    patch_size: int = 14
    text_hidden: int = 64
    text_intermediate: int = 128
    text_layers: int = 2
    text_heads: int = 2
    text_kv_heads: int = 1
    vocab_size: int = 0  # 0: the tokenizer's size


#: LLaVA-1.6-Mistral-7B's architecture (llava-hf/llava-v1.6-mistral-7b-hf): CLIP ViT-L/14 at 336 px with
#: anyres tiles, Mistral-7B (32 layers, hidden 4096, 8 KV heads), a 32,000-token vocabulary.
LLAVA_NEXT_MISTRAL_7B = LlavaNextSizes(vision_hidden=1024, vision_intermediate=4096, vision_layers=24,
                                       vision_heads=16, image_size=336, patch_size=14, text_hidden=4096,
                                       text_intermediate=14336, text_layers=32, text_heads=32, text_kv_heads=8,
                                       vocab_size=32000)


def save_random_llava_next(directory: str | Path, seed: int = 0, sizes: LlavaNextSizes = LlavaNextSizes(),
                           device: str | None = None, dtype: torch.dtype | None = None) -> Path:
    """A random LLaVA-NeXT (Mistral language model, anyres image tiling) with its processor."""
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
        MistralConfig,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from vlm_policy.models.tiny import IMAGE_TOKEN, SPECIAL_TOKENS, TINY_CHAT_TEMPLATE

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer(version=FIXTURE_VOCABULARY)
    side = sizes.image_size
    pinpoints = [[side, 2 * side], [2 * side, side], [2 * side, 2 * side], [3 * side, side], [side, 3 * side]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=sizes.vision_hidden, intermediate_size=sizes.vision_intermediate,
                                       num_hidden_layers=sizes.vision_layers, num_attention_heads=sizes.vision_heads,
                                       image_size=side, patch_size=sizes.patch_size, projection_dim=sizes.vision_hidden),
        text_config=MistralConfig(vocab_size=sizes.vocab_size or len(tokenizer), hidden_size=sizes.text_hidden,
                                  intermediate_size=sizes.text_intermediate, num_hidden_layers=sizes.text_layers,
                                  num_attention_heads=sizes.text_heads, num_key_value_heads=sizes.text_kv_heads,
                                  max_position_embeddings=32768, sliding_window=None,
                                  pad_token_id=SPECIAL_TOKENS.index("<pad>"), bos_token_id=SPECIAL_TOKENS.index("<s>"),
                                  eos_token_id=SPECIAL_TOKENS.index("</s>")),
        image_token_index=SPECIAL_TOKENS.index(IMAGE_TOKEN), image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-2, tie_word_embeddings=False,
    )
    model = _random_model(LlavaNextForConditionalGeneration, config, seed, SPECIAL_TOKENS.index("</s>"),
                          SPECIAL_TOKENS.index("<pad>"), device, dtype)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                                 image_grid_pinpoints=pinpoints, do_center_crop=True)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=sizes.patch_size,
                                   vision_feature_select_strategy="default", chat_template=TINY_CHAT_TEMPLATE,
                                   image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


#: One saver per supported architecture (tiny sizes by default), for tests that cover them all.
SAVERS: dict[str, Any] = {"llava": save_random_llava, "llava_next": save_random_llava_next,
                          "qwen2_vl": save_random_qwen2_vl, "qwen2_5_vl": partial(save_random_qwen2_vl, version="2.5"),
                          "qwen3_vl": save_random_qwen3_vl, "idefics3": save_random_idefics3,
                          "smolvlm": save_random_smolvlm, "gemma3": save_random_gemma3}
