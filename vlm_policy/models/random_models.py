"""Randomly initialised models of the supported families, saved as real checkpoints.

Nothing can be downloaded here, yet the loading path for real checkpoints must be exercised: these
builders write small (or, for benchmarks, real-sized) random models of each family to a directory,
with a tokenizer and processor, so that ``load_vlm(path)`` reads them exactly as it would read a
downloaded LLaVA, Qwen2-VL or Idefics3 / SmolVLM checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlm_policy.models.tiny import TinyConfig, build_tiny_model, build_tiny_processor, build_tiny_tokenizer, seeded

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


def _random_model(model_class, config, seed: int, eos_id: int, pad_id: int):
    """A randomly initialised model from ``seed`` whose generation stops at ``eos_id``."""
    model = seeded(seed, lambda: model_class(config))
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    return model


def save_random_llava(directory: str | Path, seed: int = 0, config: TinyConfig = TinyConfig()) -> Path:
    """The embedded tiny LLaVA written as a checkpoint directory (model + processor)."""
    directory = Path(directory)
    build_tiny_model(seed=seed, config=config).save_pretrained(directory)
    build_tiny_processor(config).save_pretrained(directory)
    return directory


def save_random_qwen2_vl(directory: str | Path, seed: int = 0, image_size: int = 56, hidden: int = 64) -> Path:
    """A tiny random Qwen2-VL (M-RoPE, dynamic-resolution vision tower) with its processor."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer(QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                     chat_template=QWEN_CHAT_TEMPLATE, image_token="<|image_pad|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    heads = 2
    head_dim = hidden // heads
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]},
                         pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], bos_token_id=None),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = _random_model(Qwen2VLForConditionalGeneration, config, seed, ids["<|im_end|>"], ids["<|endoftext|>"])
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2,
                                               temporal_patch_size=2)
    model.save_pretrained(directory)
    image_processor.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_random_idefics3(directory: str | Path, seed: int = 0, image_size: int = 32, hidden: int = 64) -> Path:
    """A tiny random Idefics3 (the SmolVLM family) with its processor, image splitting off."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer(IDEFICS3_SPECIAL_TOKENS, eos_token="<end_of_utterance>", pad_token="<pad>",
                                     chat_template=IDEFICS3_CHAT_TEMPLATE, image_token="<image>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in IDEFICS3_SPECIAL_TOKENS}
    patch, scale = 8, 2
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"], eos_token_id=ids["<end_of_utterance>"]),
        image_token_id=ids["<image>"], scale_factor=scale,
    )
    model = _random_model(Idefics3ForConditionalGeneration, config, seed, ids["<end_of_utterance>"], ids["<pad>"])
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": image_size},
                                                max_image_size={"longest_edge": image_size})
    image_seq_len = (image_size // patch) ** 2 // scale**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len,
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


SAVERS: dict[str, Any] = {"llava": save_random_llava, "qwen2_vl": save_random_qwen2_vl, "idefics3": save_random_idefics3}
