"""Turning (image, task prompt) pairs into model inputs with the processor's own chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlm_policy.loading import VLMBundle


def user_message(prompt: str) -> list[dict[str, Any]]:
    """One user turn holding the image first, then the task prompt."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def chat_text(bundle: VLMBundle, prompt: str, answer: str | None = None) -> str:
    """The templated prompt, ending where the assistant starts to answer (or with ``answer`` appended)."""
    messages = user_message(prompt)
    text = bundle.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text if answer is None else text + answer


def build_inputs(
    bundle: VLMBundle, images: Sequence[np.ndarray], prompts: Sequence[str], device: torch.device | str = "cpu",
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Left-padded batch of templated prompts with their images, on ``device``.

    Left padding puts every prompt's last token at the same position, so generated tokens line up
    across the batch; the attention mask and position ids make the padding invisible.
    ``pad_to_multiple_of`` pads further, to a length the compiled decoding has seen before.
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    texts = [chat_text(bundle, prompt) for prompt in prompts]
    pil_images = [Image.fromarray(np.asarray(image, dtype=np.uint8)) for image in images]
    tokenizer = bundle.tokenizer
    tokenizer.padding_side = "left"
    # Idefics3 / SmolVLM and Gemma 3 processors take one list of images per prompt.
    image_argument: Any = [[image] for image in pil_images] if bundle.family in ("idefics3", "gemma3") else pil_images
    padding = {"pad_to_multiple_of": pad_to_multiple_of} if pad_to_multiple_of else {}
    batch = bundle.processor(text=texts, images=image_argument, padding=True, return_tensors="pt", **padding)
    inputs = {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
    dtype = next(bundle.model.parameters()).dtype
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs


def forward_kwargs(inputs: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Model kwargs for a forward over ``inputs`` with the positions ``generate`` would use.

    Under left padding ``generate`` numbers positions from the first real token; a plain forward
    would count the padding too, so the same positions are passed explicitly. Qwen computes its 3-D
    (M-RoPE) positions itself from ``mm_token_type_ids``.
    """
    kwargs = dict(inputs)
    if family != "qwen2_vl":
        mask = kwargs["attention_mask"]
        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return kwargs


def with_answer(inputs: dict[str, torch.Tensor], tokens: torch.Tensor, family: str) -> dict[str, torch.Tensor]:
    """Forward kwargs for prompt + answer tokens (teacher forcing), positions as in generation.

    Answer tokens are text: their ``mm_token_type_ids`` (Qwen) are zero. Tokens after an answer's
    end are attended to but never scored, so they need no mask.
    """
    extended = dict(inputs)
    ones = torch.ones_like(tokens, dtype=inputs["attention_mask"].dtype)
    extended["input_ids"] = torch.cat([inputs["input_ids"], tokens], dim=1)
    extended["attention_mask"] = torch.cat([inputs["attention_mask"], ones], dim=1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in inputs:
            extended[key] = torch.cat([inputs[key], torch.zeros_like(tokens, dtype=inputs[key].dtype)], dim=1)
    return forward_kwargs(extended, family)


def answer_token_batch(bundle: VLMBundle, answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer ids followed by the end token, right-padded: (tokens, mask of real tokens)."""
    tokenizer = bundle.tokenizer
    end = tokenizer.eos_token_id
    rows = [tokenizer(answer, add_special_tokens=False).input_ids + [end] for answer in answers]
    width = max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), end, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return tokens, mask
