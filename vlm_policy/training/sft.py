"""Supervised fine-tuning on demonstrations (teacher forcing, loss on the answer only).

The prompt is encoded exactly as the policy encodes it during PPO and the answer's token ids are
appended after it, so what SFT teaches is what PPO later scores. The result is a checkpoint
directory that ``VLMPolicy(model=PATH)`` / ``load_vlm(PATH)`` loads.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vlm_policy.training.demos import Example
from vlm_policy.loading import TINY, VLMBundle, load_vlm, vision_and_language_linears
from vlm_policy.prompting import build_inputs, with_answer


@dataclass
class SFTConfig:
    """Knobs of :func:`run_sft`."""

    model: str = field(default=TINY, metadata={"help": "'tiny' or a checkpoint path to start from"})
    steps: int = field(default=300, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "examples per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (cosine decay to 10%)"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains every weight (the tiny model)"})
    train_vision: bool = field(default=True, metadata={"help": "also train the vision tower and projector"})
    vision_warmup_steps: int = field(default=150, metadata={
        "help": "steps teaching a randomly initialised vision tower to tell the demos' states apart (0: skip)"})
    warmup_labels: str = field(default="auto", metadata={
        "help": "what the warm-up classifies: 'state', 'slots' (each card/number) or 'auto' (see WarmupLabels)"})
    seed: int = field(default=0, metadata={"help": "model init (tiny), shuffling"})
    dtype: str = field(default="auto", metadata={"help": "'auto', 'float32' or 'bfloat16'"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})


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


def answer_loss(bundle: VLMBundle, examples: Sequence[Example], device: torch.device | str = "cpu") -> torch.Tensor:
    """Mean cross-entropy of the answer tokens (end token included) given image and prompt."""
    inputs = build_inputs(bundle, [e.image for e in examples], [e.prompt for e in examples], device)
    tokens, mask = answer_token_batch(bundle, [e.answer for e in examples])
    tokens, mask = tokens.to(device), mask.to(device)
    kwargs = with_answer(inputs, tokens, bundle.family)
    logits = bundle.model(**kwargs, logits_to_keep=tokens.shape[1] + 1).logits[:, :-1].float()
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
    return (losses * mask).sum() / mask.sum()


def trainable_parameters(model: torch.nn.Module, lora_r: int, train_vision: bool, seed: int) -> torch.nn.Module:
    """Full training (lora_r=0) or a LoRA adapter; returns the model to train."""
    vision, language = vision_and_language_linears(model)
    if lora_r == 0:
        for name, parameter in model.named_parameters():
            on_vision = any(marker in name for marker in ("vision", "visual", "projector", "connector"))
            parameter.requires_grad_(train_vision or not on_vision)
        return model
    from peft import LoraConfig, get_peft_model

    targets = language + (vision if train_vision else [])
    return get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=targets))


def run_sft(config: SFTConfig, examples: Sequence[Example], out_dir: str | Path, device: str = "cpu") -> Path:
    """Fine-tunes ``config.model`` on ``examples`` and saves a loadable checkpoint to ``out_dir``."""
    if not examples:
        raise ValueError("no examples to train on")
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    bundle = load_vlm(config.model, dtype=config.dtype, device=device, seed=config.seed)
    if config.vision_warmup_steps > 0:
        vision_warmup(bundle, examples, config.vision_warmup_steps, config.learning_rate, config.batch_size,
                      config.seed, device, config.progress, config.warmup_labels)
    model = trainable_parameters(bundle.model, config.lora_r, config.train_vision, config.seed).to(device)
    model.train()
    bundle = VLMBundle(model=model, processor=bundle.processor, source=bundle.source, family=bundle.family)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps))
    )
    order = np.random.default_rng(config.seed)
    steps = range(config.steps)
    if config.progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="SFT", unit="step")
    losses = []
    for _ in steps:
        batch = [examples[int(i)] for i in order.integers(len(examples), size=config.batch_size)]
        loss = answer_loss(bundle, batch, device)
        if not torch.isfinite(loss):
            raise FloatingPointError("SFT loss is NaN/inf; lower the learning rate")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if config.progress:
            steps.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    model.eval()
    return save_checkpoint(bundle, out_dir, {"sft": asdict(config), "final_loss": float(np.mean(losses[-20:]))})


def image_token_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projected image tokens a LLaVA-family model feeds its language model (batch, tokens, hidden)."""
    features = model.get_image_features(pixel_values=pixel_values)
    features = getattr(features, "pooler_output", features)
    if isinstance(features, (list, tuple)):
        features = torch.stack(list(features))
    return features


def state_slots(state: str) -> dict[str, str]:
    """Splits a symbolic state (JSON) into named slots: one per scalar field and per list position.

    ``{"Player Card": ["H2", "CK"], "Dealer Card": ["S7"]}`` gives ``{"Dealer Card[0]": '"S7"',
    "Player Card[0]": '"H2"', "Player Card[1]": '"CK"'}`` (values as JSON, so 3 and "3" stay apart).
    """
    slots: dict[str, str] = {}

    def visit(name: str, value) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                visit(f"{name}.{key}" if name else str(key), value[key])
        elif isinstance(value, list):
            for index, item in enumerate(value):
                visit(f"{name}[{index}]", item)
        else:
            slots[name] = json.dumps(value)

    visit("", json.loads(state) if state else {})
    return slots


class WarmupLabels:
    """What the vision warm-up asks the image tokens to tell: the whole state, or each slot of it.

    Whole states are the sharper target when states repeat (NumberLine has 30); when nearly every
    demonstration is a new state (card hands), a class per state only teaches the tower to memorise
    400 pictures, so each slot (a card, a number) gets its own classifier instead and the tower learns
    to read cards it has not seen in that combination. ``mode="auto"`` picks slots when fewer than four
    examples per state are available.
    """

    def __init__(self, states: Sequence[str], mode: str = "auto") -> None:
        if mode not in ("auto", "state", "slots"):
            raise ValueError(f"warm-up label mode must be 'auto', 'state' or 'slots', got {mode!r}")
        distinct = sorted(set(states))
        if len(distinct) < 2:
            raise ValueError("the vision warm-up needs demonstrations of at least two different states")
        if mode == "auto":
            mode = "state" if 4 * len(distinct) <= len(states) else "slots"
        self.mode = mode
        # A whole state is the one slot of itself, so both modes share the code below.
        slotted = {state: {"state": state} if mode == "state" else state_slots(state) for state in distinct}
        self.names = sorted({name for slots in slotted.values() for name in slots})
        # A slot missing from a state (a third card not dealt yet) is a class of its own: "".
        self.values = [{v: i for i, v in enumerate(sorted({s.get(n, "") for s in slotted.values()}))}
                       for n in self.names]
        # Each state's class per classifier, worked out once rather than at every warm-up step.
        self._classes = {state: [values[slots.get(name, "")] for name, values in zip(self.names, self.values)]
                         for state, slots in slotted.items()}

    def sizes(self) -> list[int]:
        return [len(values) for values in self.values]

    def targets(self, states: Sequence[str], device: str | torch.device) -> list[torch.Tensor]:
        """One tensor of class indices per classifier."""
        return list(torch.tensor([self._classes[s] for s in states], device=device).T)


def vision_warmup(bundle: VLMBundle, examples: Sequence[Example], steps: int, learning_rate: float, batch_size: int,
                  seed: int, device: str | torch.device = "cpu", progress: bool = True, labels: str = "auto") -> float:
    """Teaches the vision tower and projector to tell the demonstrations' states apart.

    Why: a randomly initialised vision tower hardly changes its output between two frames that differ
    in one digit, and under plain SFT the language model learns to guess before it learns to look -
    the vision side then collapses to a constant (measured: 57% on NumberLine, i.e. guessing). Linear
    classifiers over the projected image tokens, trained to name each frame's symbolic state (or each
    slot of it, see :class:`WarmupLabels`), make the image tokens carry that state first; SFT then only
    has to learn to read them. The classifiers are thrown away afterwards. Returns the final accuracy
    (mean over classifiers) on the last batch.
    """
    if bundle.family != "llava":
        raise ValueError("the vision warm-up is for the embedded tiny LLaVA; real checkpoints can already see")
    labeller = WarmupLabels([e.state for e in examples], labels)
    model = bundle.model.to(device)
    processor = bundle.processor.image_processor
    from PIL import Image

    def pixels(batch: Sequence[Example]) -> torch.Tensor:
        images = [Image.fromarray(e.image) for e in batch]
        return processor(images=images, return_tensors="pt")["pixel_values"].to(device)

    with torch.no_grad():
        width = image_token_features(model, pixels(examples[:1])).flatten(1).shape[1]
    heads = torch.nn.ModuleList(torch.nn.Linear(width, size) for size in labeller.sizes()).to(device)
    vision_params = [p for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
    optimizer = torch.optim.AdamW(vision_params + list(heads.parameters()), lr=learning_rate, weight_decay=0.0)
    order = np.random.default_rng(seed + 1)
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="vision warm-up", unit="step")
    accuracy = 0.0
    for _ in iterator:
        batch = [examples[int(i)] for i in order.integers(len(examples), size=batch_size)]
        features = image_token_features(model, pixels(batch)).flatten(1).float()
        targets = labeller.targets([e.state for e in batch], device)
        logits = [head(features) for head in heads]
        loss = sum(torch.nn.functional.cross_entropy(l, t) for l, t in zip(logits, targets)) / len(heads)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy = float(np.mean([(l.argmax(-1) == t).float().mean().item() for l, t in zip(logits, targets)]))
        if progress:
            iterator.set_postfix(loss=f"{loss.item():.3f}", accuracy=f"{accuracy:.2f}")
    return accuracy


def save_checkpoint(bundle: VLMBundle, out_dir: str | Path, metadata: dict) -> Path:
    """Saves model (LoRA merged in) and processor so that ``load_vlm(out_dir)`` reads them back."""
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = bundle.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    bundle.processor.save_pretrained(out_dir)
    (out_dir / "training.json").write_text(json.dumps(metadata, indent=2))
    return out_dir
