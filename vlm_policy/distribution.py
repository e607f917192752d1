"""The policy's distribution over answers: sampling and teacher-forced scoring in one object.

As SB3's policies hand sampling and log-probabilities to a ``Distribution``, :class:`VLMPolicy` hands
them to :class:`TokenSequenceDistribution`. One logit function (:func:`vlm_policy.logprobs.process_logits`:
temperature and banned tokens, nothing else) defines the distribution; generation samples from it and
both the rollout and the update score with it.

* **Exactly the scored distribution is sampled.** ``generate`` would fill every setting left unset
  from the checkpoint's ``generation_config.json`` (Qwen2-VL Instruct ships ``repetition_penalty=1.05``;
  others top-k, top-p, n-gram blocking) and run those processors on top of ours, which makes PPO
  silently off-policy. During sampling the model's generation config is swapped for a neutral one.
* **Micro-batches.** With ``micro_batch_size=k`` answers are scored ``k`` at a time (generation takes
  the whole rollout batch at once: it keeps no activations for a backward pass); in a backward pass
  each chunk's forward is recomputed (activation checkpointing), so only one chunk's
  activations and one chunk's full-vocabulary logits are alive at once: peak memory follows ``k``,
  not the PPO minibatch, and the gradient is the unsplit one.
* **Fast decoding.** With ``merge_adapter`` the LoRA update is merged into a copy of the base weights
  while generating (:func:`vlm_policy.adapters.lora_merged`); scoring always runs the unmerged
  model, the one the update differentiates. With ``compile_decoding`` generation runs on a static
  KV cache with its decoding step compiled by ``torch.compile`` (transformers' own mechanism);
  prompts are left-padded to a multiple of :data:`PROMPT_LENGTH_MULTIPLE` tokens so that the cache
  and the compiled graph see a few lengths only.
* **Legal actions.** Given each row's legal actions (``legal=``), generation and scoring apply the same
  per-position masks (:mod:`vlm_policy.legal_actions`): inside the answer's action value only tokens that
  continue or close a legal action, so the constrained answers are still sampled from the scored distribution.
* **Lean log-probabilities.** The sampled tokens' log-probabilities are ``logit - logsumexp`` (one
  float32 copy of the logits kept for the backward pass, not the three of ``log_softmax`` + entropy);
  the entropy is computed only when asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlm_policy.adapters import compute_autocast, lora_merged
from vlm_policy.legal_actions import LegalActionMasks
from vlm_policy.loading import VLMBundle
from vlm_policy.logprobs import TokenMasks, banned_token_mask, process_logits, token_masks, weighted_sum
from vlm_policy.prompting import answer_token_batch, build_inputs, forward_kwargs, with_answer

#: With compiled decoding, prompts are left-padded to a multiple of this many tokens (fewer recompiles).
PROMPT_LENGTH_MULTIPLE = 64


@dataclass
class ScoredAnswers:
    """Per-token results for a batch of answers (batch, max_new_tokens); zero past each answer's end."""

    tokens: torch.Tensor
    per_token: torch.Tensor  # log-probability of each token
    entropy: torch.Tensor | None  # entropy of each position's distribution (None: not computed)
    masks: TokenMasks
    prompt_hidden: torch.Tensor  # last hidden state at the prompt's last token (the value head's input)

    def log_prob(self, cot_weight: float) -> torch.Tensor:
        """The paper's ``cot_weight * sum log p(thoughts) + sum log p(action)`` per answer."""
        return weighted_sum(self.per_token, self.masks, cot_weight)

    def weighted_entropy(self, cot_weight: float) -> torch.Tensor | None:
        return None if self.entropy is None else weighted_sum(self.entropy, self.masks, cot_weight)


class TokenSequenceDistribution:
    """Samples and scores answers of ``bundle.model`` under one temperature / banned-token distribution.

    :param bundle: the model (possibly peft-wrapped) with its processor.
    :param end_ids: ids that end an answer.
    :param banned: bool mask over the vocabulary of ids never sampled.
    :param temperature: sampling temperature; 0 samples greedily.
    :param max_new_tokens: the answer budget.
    :param micro_batch_size: answers per scoring forward (None: the whole batch at once); the caller
        checks it (VLMPolicy does, before loading the model).
    :param compute_dtype: the dtype the frozen weights compute in (bf16 runs under autocast).
    :param merge_adapter: generate with the LoRA adapter merged into a copy of the base weights.
    :param compile_decoding: generate on a static KV cache with a ``torch.compile``-d decoding step.
    """

    def __init__(self, bundle: VLMBundle, end_ids: Sequence[int], banned: torch.Tensor, temperature: float,
                 max_new_tokens: int, micro_batch_size: int | None = None,
                 compute_dtype: torch.dtype = torch.float32, merge_adapter: bool = False,
                 compile_decoding: bool = False) -> None:
        self.bundle = bundle
        self.end_ids = tuple(end_ids)
        self.banned = banned.cpu()
        self._banned_by_device: dict[torch.device, torch.Tensor] = {}
        self.temperature = float(temperature)
        self.max_new_tokens = int(max_new_tokens)
        self.micro_batch_size = micro_batch_size
        self.compute_dtype = compute_dtype
        self.merge_adapter = bool(merge_adapter)
        self.compile_decoding = bool(compile_decoding)
        self._legal_masks: LegalActionMasks | None = None

    @classmethod
    def for_bundle(cls, bundle: VLMBundle, temperature: float, max_new_tokens: int, micro_batch_size: int | None = None,
                   compute_dtype: torch.dtype = torch.float32, merge_adapter: bool = False,
                   compile_decoding: bool = False) -> TokenSequenceDistribution:
        """The distribution of ``bundle``'s model with its own end tokens and banned ids (as VLMPolicy builds it)."""
        from vlm_policy.env_bridge import end_token_ids

        end_ids = end_token_ids(bundle.tokenizer, getattr(bundle.model.generation_config, "eos_token_id", None))
        vocab_size = bundle.model.get_output_embeddings().weight.shape[0]
        return cls(bundle, end_ids, banned_token_mask(bundle.tokenizer, vocab_size, end_ids), temperature,
                   max_new_tokens, micro_batch_size, compute_dtype, merge_adapter, compile_decoding)

    @staticmethod
    def value_features(hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The value head's input: the last layer's state at the prompt's last token (the paper's), in fp32."""
        return hidden[:, input_ids.shape[1] - 1].float()

    @property
    def model(self) -> nn.Module:
        return self.bundle.model

    def _chunks(self, size: int) -> list[slice]:
        step = self.micro_batch_size or size
        return [slice(start, min(start + step, size)) for start in range(0, size, step)]

    def banned_on(self, device: torch.device | str) -> torch.Tensor:
        """The banned-token mask on ``device`` (copied there once)."""
        device = torch.device(device)
        if device not in self._banned_by_device:
            self._banned_by_device[device] = self.banned.to(device)
        return self._banned_by_device[device]

    def legal_masks(self) -> LegalActionMasks:
        """The tokenizer's legal-action masks (its token pieces are found on first use)."""
        if self._legal_masks is None:
            vocab_size = self.banned.shape[0]
            self._legal_masks = LegalActionMasks.for_tokenizer(self.bundle.tokenizer, vocab_size)
        return self._legal_masks

    def _constrained(self, scores: torch.Tensor, tokens: torch.Tensor, legal) -> torch.Tensor:
        """``scores`` (batch, positions, vocab) with each position's legal-action mask (none without ``legal``)."""
        return scores if legal is None else self.legal_masks().apply(scores, tokens, legal, self.max_new_tokens)

    def _pad_id(self) -> int:
        pad = self.bundle.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.end_ids[0]

    # ------------------------------------------------------------------ sampling
    # Generation runs over the whole batch: its memory is the KV cache, not a backward pass, and
    # splitting it halves the throughput (measured on an H100 with a 7B model: 3.7 s against 7.0 s
    # for 8 answers of 64 tokens in two micro-batches of 4).
    @torch.no_grad()
    def generate(self, images: Sequence[np.ndarray], prompts: Sequence[str], device: torch.device,
                 deterministic: bool = False, legal: Sequence[Sequence[str]] | None = None) -> torch.Tensor:
        """One answer's token ids per (image, prompt), padded with the end token (no scores); with ``legal``
        (each row's legal actions) the action values name one of them."""
        return self._generate(images, prompts, device, deterministic, need_scores=False, legal=legal)[0]

    @torch.no_grad()
    def sample(self, images: Sequence[np.ndarray], prompts: Sequence[str], device: torch.device,
               deterministic: bool = False, legal: Sequence[Sequence[str]] | None = None) -> ScoredAnswers:
        """Generates one answer per (image, prompt), scored with the generation's own logits."""
        tokens, scores, prompt_hidden = self._generate(images, prompts, device, deterministic, need_scores=True,
                                                       legal=legal)
        masks = token_masks(self.bundle.tokenizer, tokens, self.end_ids)
        per_token = _valid_only(_chosen_log_probs(scores, tokens), masks)
        return ScoredAnswers(tokens, per_token, None, masks, prompt_hidden)

    def _generate(self, images, prompts, device, deterministic: bool, need_scores: bool, legal=None):
        from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

        temperature = 0.0 if deterministic else self.temperature
        banned = self.banned_on(device)
        inputs = build_inputs(self.bundle, list(images), list(prompts), device,
                              pad_to_multiple_of=PROMPT_LENGTH_MULTIPLE if self.compile_decoding else None)
        prompt_length = inputs["input_ids"].shape[1]
        masks = self.legal_masks() if legal is not None else None
        budget = self.max_new_tokens

        class _OurDistribution(LogitsProcessor):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
                scores = process_logits(scores, temperature, banned)
                if masks is not None:  # the same masks as scoring's, from the answer so far
                    scores = masks.apply_step(scores, input_ids[:, prompt_length:], legal, budget)
                return scores

        config = GenerationConfig(
            # Every other knob stays None (off): the processor below is the whole distribution.
            do_sample=temperature > 0,
            max_new_tokens=self.max_new_tokens, min_new_tokens=0, num_beams=1,
            pad_token_id=self._pad_id(), eos_token_id=list(self.end_ids),
            return_dict_in_generate=True, output_logits=need_scores, output_hidden_states=need_scores,
            **self._compile_settings(device),
        )
        self.model.eval()
        merged = lora_merged(self.model) if self.merge_adapter else contextlib.nullcontext()  # no adapter: no-op
        with neutral_generation_config(self.model, config), compute_autocast(device, self.compute_dtype), merged:
            output = self.model.generate(**inputs, generation_config=config,
                                         logits_processor=LogitsProcessorList([_OurDistribution()]))
        generated = output.sequences[:, inputs["input_ids"].shape[1]:]
        tokens = torch.full((len(prompts), self.max_new_tokens), self.end_ids[0], dtype=torch.long, device=device)
        tokens[:, : generated.shape[1]] = generated
        if not need_scores:
            return tokens, None, None
        logits = torch.stack(output.logits, dim=1)
        if logits.shape[1] < self.max_new_tokens:  # every answer ended early: pad the scores (masked anyway)
            logits = torch.cat([logits, logits[:, -1:].expand(-1, self.max_new_tokens - logits.shape[1], -1)], dim=1)
        scores = self._constrained(process_logits(logits, temperature, banned), tokens, legal)
        return tokens, scores, self.value_features(output.hidden_states[0][-1], inputs["input_ids"])

    def _compile_settings(self, device: torch.device) -> dict:
        """Generation settings for a static KV cache and a compiled decoding step (none when off).

        transformers compiles the decoding forward itself once the cache is static; on a GPU with CUDA
        graphs (``reduce-overhead``: decoding is launch-bound), elsewhere with the default mode (and it
        must be told that compiling off the GPU is wanted).
        """
        if not self.compile_decoding:
            return {}
        from transformers.generation.configuration_utils import CompileConfig

        on_gpu = torch.device(device).type == "cuda"
        compile_config = CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead" if on_gpu else "default")
        compile_config._compile_all_devices = not on_gpu
        return {"cache_implementation": "static", "compile_config": compile_config}

    # ------------------------------------------------------------------ scoring
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str], tokens: torch.Tensor, device: torch.device,
              with_entropy: bool = True, model: nn.Module | None = None,
              legal: Sequence[Sequence[str]] | None = None) -> ScoredAnswers:
        """Teacher-forced log-probabilities (and entropies) of ``tokens`` as answers to the prompts.

        With ``micro_batch_size`` set and gradients on, each chunk's forward is checkpointed: its
        activations are dropped after the forward and recomputed chunk by chunk in the backward pass.
        """
        model = model or self.model
        masks = token_masks(self.bundle.tokenizer, tokens, self.end_ids)
        checkpointed = self.micro_batch_size is not None and torch.is_grad_enabled()
        # Only positions up to the longest answer's end are scored; under causal attention the padding
        # after it changes nothing before it, so the forward stops there (exactly the same numbers).
        length = _scored_length(masks.valid)
        parts = []
        for rows in self._chunks(len(prompts)):
            inputs = build_inputs(self.bundle, list(images[rows]), list(prompts[rows]), device)
            chunk_tokens, valid = tokens[rows, :length], masks.valid[rows, :length].to(device)
            chunk_legal = None if legal is None else list(legal[rows])
            if checkpointed:
                parts.append(checkpoint(self._score_chunk, model, inputs, chunk_tokens, valid, with_entropy,
                                        chunk_legal, use_reentrant=False))
            else:
                parts.append(self._score_chunk(model, inputs, chunk_tokens, valid, with_entropy, chunk_legal))
        padding = (0, tokens.shape[1] - length)
        per_token = nn.functional.pad(torch.cat([p[0] for p in parts]), padding)
        entropy = nn.functional.pad(torch.cat([p[1] for p in parts]), padding) if with_entropy else None
        return ScoredAnswers(tokens, per_token, entropy, masks, torch.cat([p[2] for p in parts]))

    @torch.no_grad()
    def answer_log_probs(self, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str],
                         device: torch.device | str, batch_size: int = 8) -> np.ndarray:
        """The log-probability that sampling writes exactly ``answers[i]`` (then an end token) to prompt ``i``,
        every token weighted fully.

        PPO reinforces only what its sampling writes: where the right answer's probability is near 0 the
        model is confidently wrong, and its rollouts almost never try the right answer there.
        """
        device = torch.device(device)
        totals = []
        for start in range(0, len(answers), batch_size):
            rows = slice(start, start + batch_size)
            tokens, _ = answer_token_batch(self.bundle, answers[rows])
            scored = self.score(list(images[rows]), list(prompts[rows]), tokens.to(device), device, with_entropy=False)
            totals.append(scored.per_token.sum(dim=1).double().cpu().numpy())
        return np.concatenate(totals) if totals else np.zeros(0)

    @torch.no_grad()
    def prompt_hidden(self, images: Sequence[np.ndarray], prompts: Sequence[str], device: torch.device) -> torch.Tensor:
        """The last hidden state at each prompt's last token (one forward, no generation)."""
        parts = []
        for rows in self._chunks(len(prompts)):
            inputs = build_inputs(self.bundle, list(images[rows]), list(prompts[rows]), device)
            with compute_autocast(device, self.compute_dtype):
                outputs = self.model(**forward_kwargs(inputs, self.bundle.family), output_hidden_states=True,
                                     logits_to_keep=1, use_cache=False)
            parts.append(self.value_features(outputs.hidden_states[-1], inputs["input_ids"]))
        return torch.cat(parts)

    def _score_chunk(self, model: nn.Module, inputs: dict[str, torch.Tensor], tokens: torch.Tensor, valid: torch.Tensor,
                     with_entropy: bool, legal=None):
        with compute_autocast(tokens.device, self.compute_dtype):
            outputs = model(**with_answer(inputs, tokens, self.bundle.family), output_hidden_states=True,
                            logits_to_keep=tokens.shape[1] + 1, use_cache=False)
        # Position P-1+j of the logits predicts answer token j.
        scores = process_logits(outputs.logits[:, :-1], self.temperature, self.banned_on(tokens.device))
        scores = self._constrained(scores, tokens, legal)
        per_token = _chosen_log_probs(scores, tokens).masked_fill(~valid, 0.0)
        entropy = _entropy(scores).masked_fill(~valid, 0.0) if with_entropy else torch.zeros(())
        return per_token, entropy, self.value_features(outputs.hidden_states[-1], inputs["input_ids"])


def _scored_length(valid: torch.Tensor) -> int:
    """Positions up to and including the last scored token of any answer (at least one)."""
    scored_columns = valid.any(dim=0).nonzero()
    return int(scored_columns[-1]) + 1 if len(scored_columns) else 1


def _chosen_log_probs(scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) = its score - logsumexp(scores): keeps one float32 copy of the scores for backward."""
    return scores.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scores, dim=-1)


def _entropy(scores: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(scores, dim=-1)
    probs = log_probs.exp()
    return -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)


def _valid_only(per_token: torch.Tensor, masks: TokenMasks) -> torch.Tensor:
    # -inf * 0 would be NaN: a banned token never appears where the mask is on, so zero the rest.
    return per_token.masked_fill(~masks.valid.to(per_token.device), 0.0)


@contextlib.contextmanager
def neutral_generation_config(model: nn.Module, config):
    """Within the block the model's own generation config is ``config``: nothing from the checkpoint's
    ``generation_config.json`` (top-k, top-p, repetition penalty, n-gram blocking, ...) can join it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = config
    try:
        yield
    finally:
        base.generation_config = saved
