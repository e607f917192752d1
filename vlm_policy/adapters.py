"""Preparing a loaded model for training: LoRA or full fine-tuning, vision side or not, fp32 weights.

One function, :func:`prepare_for_training`, serves SFT and PPO alike, so both agree on which modules
form the vision side, how LoRA is scaled, and in which precision the optimised weights live.

* **Vision side**: one list of module names for every supported family (LLaVA / LLaVA-NeXT and
  Gemma 3: ``vision_tower``, ``multi_modal_projector``; Qwen2-VL / Qwen2.5-VL / Qwen3-VL: ``visual``
  with its mergers; Idefics3 / SmolVLM / SmolVLM2: ``vision_model``, ``connector``).
* **LoRA scaling**: ``lora_alpha`` defaults to ``2 * lora_r`` (LLaVA's LoRA recipe: r=128, alpha=256).
* **fp32 optimised weights**: whatever dtype the model computes in, every trainable parameter is kept
  in float32 (an Adam step of 5e-5 rounds to nothing on most bf16 weights). The forward then runs
  under :func:`compute_autocast`, so the matmuls still run in the compute dtype.
* **Merged weights for generation**: :func:`lora_merged` folds each LoRA update into a merged copy
  of its base weight for the length of a block (decoding then runs one matmul per layer instead of
  three), and puts the untouched base weights back after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

# Module-name components that mark the vision side (tower and projector) in the supported families.
VISION_MODULE_NAMES = ("vision_tower", "multi_modal_projector", "visual", "merger", "vision_model", "connector")


def is_vision_module(name: str) -> bool:
    """True for a parameter or module name on the vision side (tower or projector)."""
    return any(part in VISION_MODULE_NAMES for part in name.split("."))


def vision_and_language_linears(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the Linear layers on the vision side and on the language side (lm_head excluded)."""
    vision, language = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
            (vision if is_vision_module(name) else language).append(name)
    return vision, language


def lora_alpha_for(lora_r: int, lora_alpha: int | None = None) -> int:
    """The LoRA scaling numerator: ``lora_alpha`` when given, else ``2 * lora_r``."""
    return int(lora_alpha) if lora_alpha else 2 * int(lora_r)


def prepare_for_training(
    model: nn.Module,
    *,
    lora_r: int,
    train_vision: bool,
    lora_alpha: int | None = None,
    target_modules: Sequence[str] | None = None,
    gradient_checkpointing: bool = False,
) -> nn.Module:
    """Makes ``model`` trainable as asked and returns the module to optimise.

    :param model: a loaded VLM (any supported family).
    :param lora_r: LoRA rank; 0 trains every weight instead (the language model, plus the vision side
        with ``train_vision``).
    :param train_vision: also adapt (LoRA) or train (``lora_r=0``) the vision tower and projector.
    :param lora_alpha: LoRA scaling numerator (default ``2 * lora_r``).
    :param target_modules: Linear layers to adapt (default: every Linear of the language model, and of
        the vision side with ``train_vision``).
    :param gradient_checkpointing: recompute activations in the backward pass (memory for compute).
    :return: the model itself (``lora_r=0``) or its peft wrapper; trainable weights are float32.
    """
    if lora_r < 0:
        raise ValueError(f"lora_r must be >= 0 (0 trains every weight), got {lora_r}")
    if lora_r == 0:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(train_vision or not is_vision_module(name))
        prepared = model
    else:
        from peft import LoraConfig, get_peft_model

        vision, language = vision_and_language_linears(model)
        targets = list(target_modules) if target_modules else language + (vision if train_vision else [])
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha_for(lora_r, lora_alpha), lora_dropout=0.0,
                            target_modules=targets, bias="none")
        prepared = get_peft_model(model, config)
    keep_trainable_weights_in_float32(prepared)
    if gradient_checkpointing:
        if hasattr(prepared, "activation_checkpointing_enable"):  # transformers 5's name (the old one warns)
            prepared.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            prepared.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(prepared, "enable_input_require_grads"):
            prepared.enable_input_require_grads()
    return prepared


def set_lora_alpha(model: nn.Module, lora_alpha: int) -> None:
    """Rescales every LoRA layer of a peft model to ``lora_alpha / r`` (used for agents saved when the
    policy's default was ``lora_alpha=32`` whatever the rank)."""
    for module in model.modules():
        scaling, ranks = getattr(module, "scaling", None), getattr(module, "r", None)
        if isinstance(scaling, dict) and isinstance(ranks, dict):
            for adapter, rank in ranks.items():
                scaling[adapter] = lora_alpha / rank
    for config in getattr(model, "peft_config", {}).values():
        config.lora_alpha = lora_alpha


def keep_trainable_weights_in_float32(model: nn.Module) -> None:
    """Casts every trainable parameter to float32 in place (frozen ones keep the compute dtype)."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """The LoRA layers of a peft model (none for a model trained without an adapter)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency of the policy side
        return []
    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def merge_refusal(layers: Sequence[nn.Module]) -> str | None:
    """Why these LoRA layers (:func:`lora_layers`) cannot be merged exactly into their base weights (None: they can)."""
    for layer in layers:
        base = layer.get_base_layer()
        if not isinstance(base, nn.Linear) or not base.weight.is_floating_point():
            return (f"{type(base).__name__} base layers (a 4-bit or 8-bit base) cannot hold a merged adapter exactly; "
                    "use merge_for_rollouts=False")
        if any(layer.lora_variant.values()) or any(layer.lora_bias.values()):
            return "DoRA and other LoRA variants are not merged for rollouts; use merge_for_rollouts=False"
    return None


@contextlib.contextmanager
def lora_merged(model: nn.Module):
    """Within the block ``model`` (a peft LoRA model) computes with ``W + scale * B @ A`` in each adapted layer.

    Why: in decoding, where every step is a small matmul, the LoRA side path of each layer (two extra
    matmuls, a scale and an add) costs as much as the layer itself. The merged weights are new
    tensors (summed in float32, cast to the base weight's dtype) and the adapter is switched off
    through peft's ``disable_adapter``; the original base weights are only set aside, so they come
    back bit for bit: an in-place ``merge_adapter`` / ``unmerge_adapter`` pair adds and subtracts the
    update in bf16 and drifts the base a little on every rollout. Costs one extra copy of the adapted
    weights while the block runs. Nothing is merged for a model without LoRA layers.
    """
    layers = lora_layers(model)
    if not layers:
        yield
        return
    refusal = merge_refusal(layers)
    if refusal:
        raise ValueError(refusal)
    swapped: list[tuple[nn.Module, nn.Parameter]] = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                original = base.weight
                merged = original.detach().float()
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        merged = merged + layer.get_delta_weight(adapter).float()
                swapped.append((base, original))
                base.weight = nn.Parameter(merged.to(original.dtype), requires_grad=False)
        with model.disable_adapter():
            yield
    finally:
        for base, original in swapped:
            base.weight = original


def compute_autocast(device: torch.device | str, compute_dtype: torch.dtype):
    """Autocast to the model's compute dtype (bf16 / fp16), or nothing for float32.

    With fp32 trainable weights beside frozen bf16 ones, autocast runs every matmul in the compute
    dtype and keeps reductions (softmax, norms) in float32.
    """
    if compute_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=compute_dtype)
