"""Supervised fine-tuning on demonstrations (teacher forcing, loss on the answer only).

The prompt is encoded exactly as the policy encodes it during PPO and the answer's token ids are
appended after it, so what SFT teaches is what PPO later scores. The result is a checkpoint
directory that ``VLMPolicy(model=PATH)`` / ``load_vlm(PATH)`` loads::

    from vlm_policy.training.demos import write_demonstrations
    from vlm_policy.training.sft import train_sft

    write_demonstrations("gym_cards/NumberLine-v0", 400, "demos/numberline")
    checkpoint = train_sft("demos/numberline", "sft/numberline", model="tiny", sft_steps=150)

:func:`train_sft` takes settings by name; :func:`run_sft` takes the config groups (and the validation
checks the main job stops SFT with).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vlm_policy import defaults
from vlm_policy.adapters import compute_autocast, is_vision_module, prepare_for_training
from vlm_policy.checkpoints import save_sft_checkpoint
from vlm_policy.loading import VLMBundle, load_vlm, resolve_device, resolve_dtype
from vlm_policy.optim import cosine_value
from vlm_policy.prompting import answer_token_batch, build_inputs, with_answer
from vlm_policy.training.configs import CommonConfig, ModelConfig, SFTConfig
from vlm_policy.training.demos import Example


def states_repeat(states: Sequence[str]) -> bool:
    """Whether the demonstrations' states repeat: at least four demonstrations per distinct state on average
    (NumberLine's 400 show its 30 states; card hands are nearly all new)."""
    return 4 * len(set(states)) <= len(states)


class BatchDrawer:
    """Draws training batches of demonstrations, with replacement, from a seeded generator.

    Oracle play visits the states near a goal far more often than the others: in NumberLine's 400
    demonstrations (current 4, target 5) appears 31 times and (current 0, target 1) 3 times, and the
    states SFT then got confidently wrong, where PPO's sampling never writes the fix, were mostly such
    rare ones (docs/results.md). ``balance_states`` ("on", or "auto" where :func:`states_repeat`) draws each
    distinct state (``Example.state``) equally often, its demonstrations sharing its share. Otherwise
    the draw is the plain uniform one SFT made before the option existed, so earlier results reproduce.
    """

    def __init__(self, examples: Sequence[Example], seed: int, balance_states: str = "auto") -> None:
        if balance_states not in ("auto", "on", "off"):
            raise ValueError(f"balance_states must be 'auto', 'on' or 'off', got {balance_states!r}")
        self.examples = examples
        self.generator = np.random.default_rng(seed)
        states = [e.state for e in examples]
        self.weights = None
        if balance_states == "on" or (balance_states == "auto" and states_repeat(states)):
            counts = Counter(states)
            weights = np.array([1.0 / counts[state] for state in states])
            self.weights = weights / weights.sum()

    def draw(self, size: int) -> list[Example]:
        if self.weights is None:
            indices = self.generator.integers(len(self.examples), size=size)
        else:
            indices = self.generator.choice(len(self.examples), size=size, p=self.weights)
        return [self.examples[int(i)] for i in indices]


def answer_loss(bundle: VLMBundle, examples: Sequence[Example], device: torch.device | str = "cpu",
                compute_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of the answer tokens (end token included) given image and prompt, and
    the number of tokens it sums over (divide for the mean)."""
    inputs = build_inputs(bundle, [e.image for e in examples], [e.prompt for e in examples], device)
    tokens, mask = answer_token_batch(bundle, [e.answer for e in examples])
    tokens, mask = tokens.to(device), mask.to(device)
    with compute_autocast(device, compute_dtype):
        logits = bundle.model(**with_answer(inputs, tokens, bundle.family), logits_to_keep=tokens.shape[1] + 1).logits
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens, reduction="none")
    return (losses * mask).sum(), mask.sum()


def train_sft(demos: str | Path | Sequence[Example], out_dir: str | Path, model: str = "tiny", *,
              seed: int = 0, device: str = "auto", progress: bool = True, **settings) -> Path:
    """Fine-tunes ``model`` on demonstrations and returns the checkpoint directory (``out_dir``).

    :param demos: a folder or JSONL written by ``vlm-cards demos`` / :func:`~vlm_policy.training.demos.write_demonstrations`,
        or the examples themselves.
    :param model: ``"tiny"`` or a checkpoint path.
    :param settings: any of :class:`SFTConfig`'s (``sft_steps``, ``sft_batch_size``, ``sft_learning_rate``,
        ``sft_lora_r``, ``vision_warmup_steps``) and :class:`ModelConfig`'s (``dtype``, ``micro_batch_size``,
        ``gradient_checkpointing``) by name; what is left out takes ``vlm-cards sft``'s default.
    """
    from vlm_policy.training.demos import read_demonstrations

    sft_names = {name for name in SFTConfig.__dataclass_fields__ if name not in SFTConfig.validation_settings}
    model_names = set(ModelConfig.__dataclass_fields__) - {"model"}
    unknown = sorted(set(settings) - sft_names - model_names)
    if unknown:
        raise TypeError(f"train_sft() takes no setting {', '.join(unknown)}; "
                        f"it takes {', '.join(sorted(sft_names | model_names))}")
    examples = read_demonstrations(demos) if isinstance(demos, (str, Path)) else list(demos)
    return run_sft(examples, out_dir,
                   sft=SFTConfig(**{name: value for name, value in settings.items() if name in sft_names}),
                   model=ModelConfig(model=model, **{name: value for name, value in settings.items() if name in model_names}),
                   common=CommonConfig(seed=seed, device=device, progress=progress))


def run_sft(examples: Sequence[Example], out_dir: str | Path, sft: SFTConfig | None = None,
            model: ModelConfig | None = None, common: CommonConfig | None = None,
            validation: Callable[[VLMBundle, Sequence[str]], dict[str, float]] | None = None,
            tensorboard_dir: str | Path | None = None, tensorboard_name: str = "sft") -> Path:
    """Fine-tunes ``model.model`` on ``examples`` and saves a checkpoint ``load_vlm(out_dir)`` reads.

    :param examples: demonstrations (:func:`vlm_policy.training.demos.read_demonstrations`).
    :param out_dir: the checkpoint directory to write.
    :param sft: steps, batch, learning rate, LoRA, vision warm-up.
    :param model: which model, compute dtype, gradient checkpointing, micro-batch size (a batch is
        split into micro-batches whose gradients accumulate into one optimizer step: the same step,
        with one micro-batch's activations alive).
    :param common: seed, device, progress bars.
    :param tensorboard_dir: where TensorBoard's run ``tensorboard_name`` (loss, learning rate, checks) is written
        (None: not).
    :param validation: measures the model as it is (in eval mode, left unchanged) on validation episodes, every
        ``sft.sft_check_every`` steps: ``validation(bundle, names)`` returns each named measure of
        :meth:`SFTConfig.stop_targets` ("success": the share of episodes greedy answers win; "reach": the
        share of frames where sampling is likely enough to write the oracle's answer). SFT stops at the first
        check where every measure meets its target; the checks are recorded in the checkpoint's
        ``training.json`` (``validation``, ``steps_done``). A stop asked for without it is an error.

    Under torchrun (:mod:`vlm_policy.distributed`) every process draws the same batch and trains on its
    share of the rows ``rank::world_size``; the summed gradients and token counts are added up across
    processes before the division, so each step is the one-process step on the whole batch. Rank 0
    alone writes the checkpoint; the others wait for it and return its path.
    """
    from vlm_policy import distributed
    from vlm_policy.training.evaluation import global_rngs_restored

    sft, model, common = sft or SFTConfig(), model or ModelConfig(), common or CommonConfig()
    # The model's rules for what was left out (TrainConfig has resolved them already for the main job).
    sft = replace(sft, sft_lora_r=defaults.lora_rank_for(model.model, sft.sft_lora_r),
                  sft_learning_rate=defaults.learning_rates_for(model.model)[0] if sft.sft_learning_rate is None
                  else sft.sft_learning_rate)
    context = distributed.current()
    if not examples:
        raise ValueError("no examples to train on")
    targets = sft.stop_targets()
    if targets and validation is None:
        flags = " and ".join(f"--sft-stop-{name}" for name in targets)
        raise ValueError(f"{flags} needs validation episodes to play, which `vlm-cards sft` (demonstrations alone) "
                         "has not: use `vlm-cards train`, or leave the flag out")
    device = torch.device(distributed.device_for(context, str(resolve_device(common.device))))
    random.seed(common.seed)
    torch.manual_seed(common.seed)
    compute_dtype = resolve_dtype(model.dtype, device)
    bundle = load_vlm(model.model, dtype=compute_dtype, device=device, seed=common.seed)
    bundle.model.to(device)
    warmup_steps = sft.warmup_steps_for(model.model)
    if warmup_steps > 0:
        vision_warmup(bundle, examples, warmup_steps, sft.sft_learning_rate, sft.sft_batch_size, common.seed, device,
                      common.progress and context.is_main, compute_dtype=compute_dtype)
        distributed.broadcast_module(bundle.model)  # identical already; made certain before SFT
    # The vision tower stays as the warm-up left it: SFT's updates to it can collapse it.
    trained = prepare_for_training(bundle.model, lora_r=sft.sft_lora_r, train_vision=False,
                                   gradient_checkpointing=model.checkpointing_for(model.model))
    trained.train()
    bundle = VLMBundle(model=trained, processor=bundle.processor, source=bundle.source, family=bundle.family)
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=sft.sft_learning_rate,
                                  weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_value(step / sft.sft_steps, 1.0, 0.1))
    drawer = BatchDrawer(examples, common.seed)
    steps = tqdm(range(sft.sft_steps), desc="SFT", unit="step", disable=not (common.progress and context.is_main))
    chunk = model.micro_batch or sft.sft_batch_size
    trainable = [p for p in trained.parameters() if p.requires_grad]
    losses = []
    checks: list[dict[str, float]] = []
    writer = None
    if tensorboard_dir is not None and context.is_main:  # the loss curve and the checks beside PPO's in TensorBoard
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(tensorboard_dir) / tensorboard_name))
    try:
        for step in steps:
            # Every process draws the same batch and keeps its own rows (all of them alone).
            batch = drawer.draw(sft.sft_batch_size)[context.rank::context.world_size]
            optimizer.zero_grad()
            loss_sum, total_tokens = 0.0, 0
            for start in range(0, len(batch), chunk):
                chunk_sum, chunk_tokens = answer_loss(bundle, batch[start:start + chunk], device, compute_dtype)
                if not torch.isfinite(chunk_sum):
                    raise FloatingPointError("SFT loss is NaN/inf; lower --sft-learning-rate")
                chunk_sum.backward()
                loss_sum, total_tokens = loss_sum + chunk_sum.item(), total_tokens + int(chunk_tokens)
            if context.enabled:
                distributed.sum_gradients(trainable)
                loss_sum, total_tokens = distributed.sum_across([loss_sum, total_tokens])
            # The summed gradients over the whole batch's tokens: the mean loss's gradient, as one unsplit step.
            for parameter in trainable:
                if parameter.grad is not None:
                    parameter.grad /= total_tokens
            step_loss = loss_sum / total_tokens
            torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(step_loss)
            steps.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            done = step + 1
            if writer is not None:
                writer.add_scalar("sft/loss", step_loss, done)
                writer.add_scalar("sft/learning_rate", schedule.get_last_lr()[0], done)
            if targets and done % sft.sft_check_every == 0 and done < sft.sft_steps:
                trained.eval()
                measures = None
                if context.is_main:
                    # A check (which loads a policy, and seeds) leaves SFT's own draws exactly as they would have been.
                    with global_rngs_restored():
                        measures = validation(bundle, list(targets))
                measures = distributed.broadcast_object(measures)
                trained.train()
                checks.append({"step": done, **measures})
                if writer is not None:
                    for name, value in measures.items():
                        writer.add_scalar(f"sft/check_{name}", value, done)
                if context.is_main:
                    steps.write(f"SFT step {done}: {describe_measures(measures)}")
                if all(measures[name] >= target for name, target in targets.items()):
                    if context.is_main:
                        reached = ", ".join(f"{measures[name]:.1%} >= --sft-stop-{name} {target}"
                                            for name, target in targets.items())
                        steps.write(f"SFT stops at step {done}: {reached}")
                    break
    finally:  # the bar and the TensorBoard file closed whatever stops SFT
        steps.close()
        if writer is not None:
            writer.close()
    trained.eval()
    metadata = {"sft": asdict(sft), "model": asdict(model), "seed": common.seed,
                "final_loss": float(np.mean(losses[-20:])), "steps_done": len(losses)}
    if targets:
        metadata["validation"] = checks
    if context.enabled:
        distributed.check_same_weights(trained, "SFT weights")
        metadata["processes"] = context.world_size
    saved = save_sft_checkpoint(bundle, out_dir, metadata) if context.is_main else Path(out_dir)
    distributed.barrier()  # the checkpoint is whole before any process reads it
    return saved


def describe_measures(measures: dict[str, float]) -> str:
    """A validation check in words: ``greedy answers win 70.3% of the validation episodes; ...``."""
    words = {"success": "greedy answers win {:.1%} of the validation episodes",
             "reach": "the oracle's answer is within sampling's reach on {:.1%} of the validation frames"}
    return "; ".join(words[name].format(value) for name, value in measures.items())


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
            mode = "state" if states_repeat(states) else "slots"
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
                  seed: int, device: str | torch.device = "cpu", progress: bool = True, labels: str = "auto",
                  compute_dtype: torch.dtype = torch.float32, balance_states: str = "auto") -> float:
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

    with torch.no_grad(), compute_autocast(device, compute_dtype):
        width = image_token_features(model, pixels(examples[:1])).flatten(1).shape[1]
    heads = torch.nn.ModuleList(torch.nn.Linear(width, size) for size in labeller.sizes()).to(device)
    vision_params = [p for n, p in model.named_parameters() if is_vision_module(n)]
    for parameter in vision_params:  # trained weights stay float32 whatever the compute dtype
        parameter.data = parameter.data.float()
    optimizer = torch.optim.AdamW(vision_params + list(heads.parameters()), lr=learning_rate, weight_decay=0.0)
    drawer = BatchDrawer(examples, seed + 1, balance_states)
    iterator = tqdm(range(steps), desc="vision warm-up", unit="step", disable=not progress)
    accuracy = 0.0
    for _ in iterator:
        batch = drawer.draw(batch_size)
        with compute_autocast(device, compute_dtype):
            features = image_token_features(model, pixels(batch)).flatten(1).float()
        targets = labeller.targets([e.state for e in batch], device)
        logits = [head(features) for head in heads]
        loss = sum(torch.nn.functional.cross_entropy(z, t) for z, t in zip(logits, targets)) / len(heads)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy = float(np.mean([(z.argmax(-1) == t).float().mean().item() for z, t in zip(logits, targets)]))
        iterator.set_postfix(loss=f"{loss.item():.3f}", accuracy=f"{accuracy:.2f}")
    return accuracy
