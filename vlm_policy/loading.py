"""Loading a vision-language model and its processor: the embedded tiny one or a real checkpoint.

``load_vlm("tiny")`` builds the embedded default (``"tiny-v1"`` its first version); any other string
is a local directory or a model id already in the Hugging Face cache (nothing is downloaded:
``local_files_only``). Supported families (:data:`FAMILIES`): LLaVA / LLaVA-NeXT (the paper's),
Idefics3 / SmolVLM / SmolVLM2, Qwen2-VL / Qwen2.5-VL / Qwen3-VL and Gemma 3.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

TINY = "tiny"
#: The embedded model's first version (prompts spelled out in ~110 tokens); ``"tiny"`` is the latest.
TINY_V1 = "tiny-v1"
#: Marks a model directory that holds a configuration and processor but no weights on purpose (the
#: base of a self-contained agent zip, whose own state dict supplies every weight).
WEIGHTS_ELSEWHERE_FILE = "weights_in_agent.json"
FAMILIES = {
    "llava": "llava",
    "llava_next": "llava",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "qwen3_vl": "qwen2_vl",
    "gemma3": "gemma3",
}


@dataclass
class VLMBundle:
    """A loaded model with everything needed to prompt it."""

    model: Any
    processor: Any
    source: str  # "tiny" or the path / cache id it came from
    family: str  # how prompts are built: "llava", "idefics3", "qwen2_vl" or "gemma3" (FAMILIES)

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def is_tiny(source: str) -> bool:
    """Whether ``source`` names a version of the embedded tiny model (its weights live only in agents)."""
    return source in (TINY, TINY_V1)


def tiny_version(source: str) -> int:
    from vlm_policy.models.tiny import LATEST_VERSION

    return 1 if source == TINY_V1 else LATEST_VERSION


def tiny_source_for_vocab(source: str, vocab_size: int) -> str:
    """``source``, or ``"tiny-v1"`` for an agent saved as ``"tiny"`` by version 1 (told by its vocabulary size)."""
    from vlm_policy.models.tiny import tiny_version_for_vocab

    if source == TINY and tiny_version_for_vocab(vocab_size) == 1:
        return TINY_V1
    return source


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU (SB3's own rule for ``device="auto"``)."""
    import torch  # here, not at the top: the command line's --help starts without torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device; use --device cpu or auto")
    return device


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA, float32 elsewhere (CPUs gain nothing from bf16 here)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {dtype!r}") from None


def family_of(model_type: str) -> str:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(
            f"model type {model_type!r} is not supported; supported: {sorted(FAMILIES)}"
        ) from None


def load_processor(source: str):
    """The processor alone (what the env side needs to decode actions)."""
    if is_tiny(source):
        from vlm_policy.models.tiny import build_tiny_processor

        return build_tiny_processor(version=tiny_version(source))
    path = check_model_source(source)
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
    return _processor_for(path, family_of(model_type), model_type)


def context_length(source: str) -> int | None:
    """The most tokens the model's language model takes at once (None when its config does not say)."""
    if is_tiny(source):
        from vlm_policy.models.tiny import TinyConfig

        return TinyConfig().max_positions
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(check_model_source(source), local_files_only=True)
    for part in (getattr(config, "text_config", None), config):
        value = getattr(part, "max_position_embeddings", None)
        if value:
            return int(value)
    return None


def generation_end_ids(source: str) -> int | list[int] | None:
    """The end-of-answer ids the checkpoint's generation config adds to its tokenizer's EOS (or None)."""
    if is_tiny(source):
        return None
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(check_model_source(source), local_files_only=True).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        return None


def load_vlm(
    source: str,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    load_in_4bit: bool = False,
    seed: int = 0,
) -> VLMBundle:
    """Loads ``"tiny"`` / ``"tiny-v1"`` (built from ``seed``) or a checkpoint directory / HF cache id."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"model must be 'tiny' or a path / Hugging Face cache id (a str), got {type(source).__name__}; "
            "model objects are not accepted so that saved agents stay loadable"
        )
    import torch

    source = os.fspath(source)
    if is_tiny(source):
        from vlm_policy.models.tiny import build_tiny_model, build_tiny_processor

        version = tiny_version(source)
        model = build_tiny_model(seed=seed, version=version).to(resolve_dtype(dtype, device))
        return VLMBundle(model=model, processor=build_tiny_processor(version=version), source=source, family="llava")
    path = check_model_source(source)
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    family = family_of(config.model_type)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, device), "local_files_only": True}
    if load_in_4bit:
        kwargs.update(_four_bit_kwargs(device))
    elif torch.device(device).type == "cuda":
        kwargs["device_map"] = {"": str(torch.device(device))}  # straight onto the GPU, not through host memory
    if (Path(path) / WEIGHTS_ELSEWHERE_FILE).is_file():
        # The architecture of an agent's base, extracted from the agent zip, which holds the weights.
        model = AutoModelForImageTextToText.from_config(config, dtype=kwargs["dtype"])
    else:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    return VLMBundle(model=model.eval(), processor=_processor_for(path, family, config.model_type), source=source,
                     family=family)


def check_model_source(source: str) -> str:
    """A local directory, or a cache id that resolves offline; otherwise an error naming it."""
    if Path(source).is_dir():
        if not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"model directory {source!r} has no config.json: it is not a saved model")
        return source
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(source, local_files_only=True)
    except Exception as error:  # the hub client raises several types for "not in the cache"
        raise FileNotFoundError(
            f"model {source!r} is neither 'tiny', a local directory, nor a model in the Hugging Face cache "
            f"({error.__class__.__name__}); nothing is downloaded here"
        ) from None


def _processor_for(path: str, family: str, model_type: str):
    from transformers import AutoProcessor, AutoTokenizer

    # The stock Qwen and SmolVLM processors build a video processor, which needs torchvision (that
    # breaks the CPU torch build used here); images need none, so these are built without one.
    if family == "qwen2_vl":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
        return qwen_image_processor_class(model_type)(image_processor=image_processor, tokenizer=tokenizer,
                                                      chat_template=tokenizer.chat_template)
    if model_type == "smolvlm":
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        return smolvlm_image_processor_class().from_pretrained(
            path, local_files_only=True, image_processor=SmolVLMImageProcessorPil.from_pretrained(path, local_files_only=True))
    return AutoProcessor.from_pretrained(path, local_files_only=True)


def qwen_image_processor_class(model_type: str = "qwen2_vl"):
    """A Qwen2-VL / Qwen2.5-VL (or, for ``"qwen3_vl"``, Qwen3-VL) processor for images only.

    The stock one insists on a video processor, which needs torchvision (which breaks the CPU torch
    build used here); the processor's attributes come from its ``__init__`` signature, so this
    subclass simply leaves the video processor out.
    """
    from transformers import Qwen2VLProcessor, Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin

    stock = Qwen3VLProcessor if model_type == "qwen3_vl" else Qwen2VLProcessor

    class QwenImageProcessor(stock):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            self.vision_start_token = getattr(tokenizer, "vision_start_token", None) or "<|vision_start|>"
            self.vision_end_token = getattr(tokenizer, "vision_end_token", None) or "<|vision_end|>"
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return QwenImageProcessor


def smolvlm_image_processor_class():
    """A SmolVLM / SmolVLM2 processor for images only (no video processor: see :func:`qwen_image_processor_class`)."""
    from transformers import SmolVLMProcessor
    from transformers.processing_utils import ProcessorMixin

    class SmolVLMImageProcessor(SmolVLMProcessor):
        def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, image_seq_len=image_seq_len, chat_template=chat_template,
                             **kwargs)

        def apply_chat_template(self, conversation, chat_template=None, **kwargs):
            # The stock method reads video defaults (frames, fps) from the video processor left out here.
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    return SmolVLMImageProcessor


def _four_bit_kwargs(device: str | torch.device) -> dict[str, Any]:
    import torch

    if torch.device(device).type != "cuda":
        raise ValueError("load_in_4bit needs a CUDA device (bitsandbytes' 4-bit kernels run on GPUs only)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError("load_in_4bit needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16,
                                                       bnb_4bit_quant_type="nf4"), "device_map": {"": 0}}


def preferred_image_size(processor) -> int | None:
    """The square side the vision tower works at, to render env frames at that size (None: keep)."""
    image_processor = getattr(processor, "image_processor", None)
    for attribute in ("crop_size", "size"):
        size = getattr(image_processor, attribute, None)
        if size is None:
            continue
        if isinstance(size, int):
            return size
        size = dict(size)
        if "height" in size and size.get("height") == size.get("width"):
            return int(size["height"])
        if "shortest_edge" in size and len(size) == 1:
            return int(size["shortest_edge"])
    return None
