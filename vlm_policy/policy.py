"""VLMPolicy: a Stable-Baselines3 actor-critic policy that is a LoRA-tuned vision-language model.

``PPO(VLMPolicy, env, policy_kwargs={"model": "tiny"})`` fine-tunes the model end to end. Per rollout
step, one batched ``generate`` call over all envs yields the answer tokens, their log-probabilities
(scored from the raw logits with :func:`vlm_policy.logprobs.process_logits`) and the value (a small
MLP on the last hidden state of the prompt) - no second forward pass. ``evaluate_actions`` is one
teacher-forced forward over prompt + answer with the same logit processing.
"""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from vlm_policy.env_bridge import decode_prompt, end_token_ids, tokenizer_fingerprint
from vlm_policy.loading import TINY, VLMBundle, load_vlm, vision_and_language_linears
from vlm_policy.logprobs import banned_token_mask, process_logits, token_logprobs, token_masks, weighted_sum
from vlm_policy.optim import ScaledLRAdamW
from vlm_policy.prompting import build_inputs, forward_kwargs, with_answer
from vlm_policy.reference import ReferenceCache, carrying_loss_term, frozen_copy, kl_to_reference

VALUE_HEAD_FILE = "value_head.safetensors"
# Arguments SB3's algorithms pass to every ActorCriticPolicy; they shape heads VLMPolicy does not build.
_SB3_ARGUMENTS_IGNORED = frozenset({
    "net_arch", "activation_fn", "ortho_init", "normalize_images", "share_features_extractor", "use_sde",
    "log_std_init", "full_std", "use_expln", "squash_output", "features_extractor_class", "features_extractor_kwargs",
})
POLICY_CONFIG_FILE = "vlm_policy.json"
# The frozen reference model of the KL penalty: rebuilt from `model` at load time, never saved.
REFERENCE_PREFIX = "reference_vlm."


class ValueHead(nn.Module):
    """MLP from the prompt's last hidden state to a scalar value (the paper: hidden -> 1024 -> 512 -> 1)."""

    def __init__(self, hidden_size: int, layers: Sequence[int] = (1024, 512)) -> None:
        super().__init__()
        sizes = [hidden_size, *layers]
        blocks: list[nn.Module] = []
        for inputs, outputs in zip(sizes[:-1], sizes[1:]):
            blocks += [nn.Linear(inputs, outputs), nn.ReLU()]
        blocks.append(nn.Linear(sizes[-1], 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden.float())


class VLMPolicy(ActorCriticPolicy):
    """Actor-critic policy whose actor is a vision-language model that writes its answer as tokens.

    The action space must be the ``MultiDiscrete([vocab] * max_new_tokens)`` of
    :class:`vlm_policy.env_bridge.TokenActionWrapper` (use :func:`vlm_policy.make_vlm_vec_env`).

    Args:
        observation_space, action_space, lr_schedule: given by SB3.
        model: ``"tiny"`` (the embedded default) or a local path / HF cache id of a checkpoint.
        temperature: sampling temperature (the paper: 0.2); 0 samples greedily.
        cot_weight: the paper's lambda, weight of the chain-of-thought tokens' log-probability.
        lora_r: LoRA rank; 0 trains every weight of the model instead (sensible for the tiny one only).
        lora_alpha: LoRA scaling numerator.
        lora_target_modules: names of Linear layers to adapt (default: every Linear of the language model).
        train_vision: also adapt (or, with lora_r=0, train) the vision tower and projector.
        value_head_layers: hidden sizes of the value MLP.
        value_lr_scale: the value head's learning rate is the policy's times this.
        value_gradients_to_model: let the value loss train the VLM too (the paper's shared trunk); False
            feeds the value head a detached hidden state, so early value errors cannot disturb the policy.
        kl_coef: weight of a KL penalty that keeps the answers near those of the model as loaded (the
            SFT checkpoint); 0 turns it off. See :mod:`vlm_policy.reference`. With LoRA the reference is
            the base with the adapter switched off (no extra memory); with ``lora_r=0`` it is a frozen
            copy of the model (twice the weights in memory).
        gradient_checkpointing: trade compute for memory in evaluate_actions' backward pass.
        dtype: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"float32"``, ``"bfloat16"``.
        load_in_4bit: load the base weights in 4 bits with bitsandbytes (CUDA only).
        seed: seed of the tiny model's random initialisation.
        optimizer_class, optimizer_kwargs: as in SB3 (default :class:`ScaledLRAdamW`, eps 1e-5).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        model: str = TINY,
        temperature: float = 0.2,
        cot_weight: float = 0.5,
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_target_modules: Sequence[str] | None = None,
        train_vision: bool = False,
        value_head_layers: Sequence[int] = (1024, 512),
        value_lr_scale: float = 1.0,
        value_gradients_to_model: bool = True,
        kl_coef: float = 0.0,
        gradient_checkpointing: bool = False,
        dtype: str = "auto",
        load_in_4bit: bool = False,
        seed: int = 0,
        optimizer_class: type[torch.optim.Optimizer] = ScaledLRAdamW,
        optimizer_kwargs: dict[str, Any] | None = None,
        **unused: Any,
    ) -> None:
        _check_spaces(observation_space, action_space)
        if not isinstance(model, str):
            raise TypeError(f"model must be 'tiny' or a path (a str), got {type(model).__name__}")
        if temperature < 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if cot_weight < 0:
            raise ValueError(f"cot_weight must be >= 0, got {cot_weight}")
        if kl_coef < 0 or not math.isfinite(kl_coef):
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        unknown = set(unused) - _SB3_ARGUMENTS_IGNORED
        if unknown:
            raise TypeError(f"VLMPolicy got unknown arguments {sorted(unknown)}")
        if unused.get("use_sde"):
            raise ValueError("VLMPolicy samples tokens; gSDE (use_sde=True) does not apply")
        self.model_source = model
        self.temperature = float(temperature)
        self.cot_weight = float(cot_weight)
        self.lora_r = int(lora_r)
        self.lora_alpha = int(lora_alpha)
        self.lora_target_modules = list(lora_target_modules) if lora_target_modules else None
        self.train_vision = bool(train_vision)
        self.value_head_layers = tuple(int(v) for v in value_head_layers)
        self.value_lr_scale = float(value_lr_scale)
        self.value_gradients_to_model = bool(value_gradients_to_model)
        self.kl_coef = float(kl_coef)
        # Mean penalty KL of each recent minibatch, until a logger reads it (VLMRolloutLogger drains it).
        self.reference_kl_log: deque[float] = deque(maxlen=4096)
        self.reference_cache = ReferenceCache()
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.dtype_name = dtype
        self.load_in_4bit = bool(load_in_4bit)
        self.seed = int(seed)
        self.max_new_tokens = int(len(action_space.nvec))
        kwargs = {"eps": 1e-5, "weight_decay": 0.0}
        kwargs.update(optimizer_kwargs or {})
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            ortho_init=False,
            normalize_images=False,
            optimizer_class=optimizer_class,
            optimizer_kwargs=kwargs,
        )

    # ------------------------------------------------------------------ construction
    def _build(self, lr_schedule: Schedule) -> None:
        """Loads the VLM, adds LoRA and the value head, and makes the optimizer (SB3's heads are not built:
        a vocab x tokens linear layer would hold 100M+ useless parameters)."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        bundle = load_vlm(self.model_source, dtype=self.dtype_name, device=device, load_in_4bit=self.load_in_4bit,
                          seed=self.seed)
        self._check_tokenizer(bundle)
        self.family = bundle.family
        self.processor = bundle.processor
        if self.kl_coef > 0 and self.lora_r == 0:
            self.reference_vlm = frozen_copy(bundle.model)
            _disable_dropout(self.reference_vlm)
        self.vlm = self._adapt(bundle.model)
        self.bundle = VLMBundle(model=self.vlm, processor=bundle.processor, source=bundle.source, family=bundle.family)
        _disable_dropout(self.vlm)
        hidden_size = _text_hidden_size(bundle.model.config)
        self.value_head = ValueHead(hidden_size, self.value_head_layers)
        generation_eos = getattr(bundle.model.generation_config, "eos_token_id", None)
        self.end_ids = end_token_ids(bundle.tokenizer, generation_eos)
        vocab_size = bundle.model.get_output_embeddings().weight.shape[0]
        self.register_buffer("banned_tokens", banned_token_mask(bundle.tokenizer, vocab_size, self.end_ids), persistent=False)
        if self.gradient_checkpointing:
            self.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(self.vlm, "enable_input_require_grads"):
                self.vlm.enable_input_require_grads()
        groups = [
            {"params": [p for p in self.vlm.parameters() if p.requires_grad]},
            {"params": list(self.value_head.parameters()), "lr_scale": self.value_lr_scale},
        ]
        self.optimizer = self.optimizer_class(groups, lr=lr_schedule(1), **self.optimizer_kwargs)

    def _check_tokenizer(self, bundle: VLMBundle) -> None:
        expected = int(self.observation_space["tokenizer"].low[0])
        actual = tokenizer_fingerprint(bundle.tokenizer)
        if expected != actual:
            raise ValueError(
                f"the env decodes actions with a different tokenizer than model {self.model_source!r} uses "
                f"(fingerprints {expected} vs {actual}); pass the same model= to make_vlm_vec_env and to the policy"
            )
        if len(bundle.tokenizer) != int(self.action_space.nvec[0]):
            raise ValueError(f"action space vocabulary {int(self.action_space.nvec[0])} != tokenizer size {len(bundle.tokenizer)}")

    def _adapt(self, model: nn.Module) -> nn.Module:
        """LoRA on the language model (and the vision side if asked), or full training with lora_r=0."""
        vision, language = vision_and_language_linears(model)
        if self.lora_r == 0:
            for name, parameter in model.named_parameters():
                on_vision = any(name.startswith(v) for v in vision) or "vision" in name or "projector" in name
                parameter.requires_grad_(self.train_vision or not on_vision)
            return model
        from peft import LoraConfig, get_peft_model

        targets = self.lora_target_modules or (language + (vision if self.train_vision else []))
        config = LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=0.0, target_modules=targets,
                            bias="none")
        return get_peft_model(model, config)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            model=self.model_source, temperature=self.temperature, cot_weight=self.cot_weight, lora_r=self.lora_r,
            lora_alpha=self.lora_alpha, lora_target_modules=self.lora_target_modules, train_vision=self.train_vision,
            value_head_layers=self.value_head_layers, value_lr_scale=self.value_lr_scale,
            value_gradients_to_model=self.value_gradients_to_model, kl_coef=self.kl_coef,
            gradient_checkpointing=self.gradient_checkpointing, dtype=self.dtype_name, load_in_4bit=self.load_in_4bit,
            seed=self.seed,
        )
        for key in _SB3_ARGUMENTS_IGNORED:
            data.pop(key, None)
        return data

    # ------------------------------------------------------------------ SB3 interface
    def set_training_mode(self, mode: bool) -> None:
        # Dropout is disabled at build, so train mode changes nothing in the forward pass; it is kept
        # on only because Hugging Face applies gradient checkpointing in train mode alone.
        self.vlm.train(mode and self.gradient_checkpointing)
        self.value_head.train(mode)
        self.training = mode

    def forward(self, obs: dict[str, torch.Tensor], deterministic: bool = False):
        """Samples answers for a batch of observations: (token ids, values, log-probabilities)."""
        inputs = self._model_inputs(obs)
        tokens, scores, prompt_hidden = self._generate(inputs, deterministic)
        log_prob = self._score(tokens, scores)
        values = self._value(prompt_hidden)
        _check_finite(values=values, log_prob=log_prob)
        return tokens, values, log_prob

    def evaluate_actions(self, obs: dict[str, torch.Tensor], actions: torch.Tensor):
        """Values, log-probabilities and entropies of given answers, in one teacher-forced forward.

        With ``kl_coef > 0`` the returned log-probabilities also carry the gradient of the KL penalty
        (their values are unchanged; see :func:`vlm_policy.reference.carrying_loss_term`).
        """
        inputs = self._model_inputs(obs)
        tokens = actions.round().long().to(self.device)
        scores, prompt_hidden = self._teacher_forced(inputs, tokens)
        masks = token_masks(self.bundle.tokenizer, tokens, self.end_ids)
        per_token, entropy = self._per_token(tokens, scores, masks)
        log_prob = weighted_sum(per_token, masks, self.cot_weight)
        values = self._value(prompt_hidden)
        _check_finite(values=values, log_prob=log_prob)
        if self.kl_coef > 0:
            penalty = self.kl_coef * self._kl_to_reference(obs, inputs, tokens, per_token, masks)
            log_prob = carrying_loss_term(log_prob, penalty)
        return values, log_prob, weighted_sum(entropy, masks, self.cot_weight)

    def _kl_to_reference(self, obs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], tokens: torch.Tensor,
                         per_token: torch.Tensor, masks) -> torch.Tensor:
        """Mean KL estimate between this policy and the reference over the batch (recorded for logging)."""
        reference = self.reference_cache.get(obs, tokens)
        if reference is None:
            reference = self.reference_log_probs(inputs, tokens, masks)
            self.reference_cache.put(obs, tokens, reference)
        kl = kl_to_reference(per_token, reference.to(per_token.device), masks.valid.to(per_token.device)).mean()
        self.reference_kl_log.append(float(kl.detach()))
        return kl

    @torch.no_grad()
    def reference_log_probs(self, inputs: dict[str, torch.Tensor], tokens: torch.Tensor, masks) -> torch.Tensor:
        """Per-token log-probabilities of ``tokens`` under the model as loaded (the KL penalty's reference)."""
        if self.lora_r > 0:
            with self.vlm.disable_adapter():
                scores, _ = self._teacher_forced(inputs, tokens)
        else:
            scores, _ = self._teacher_forced(inputs, tokens, self.reference_vlm)
        return self._per_token(tokens, scores, masks)[0]

    def predict_values(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Values from one forward over the prompts (no generation)."""
        inputs = self._model_inputs(obs)
        outputs = self.vlm(**forward_kwargs(inputs, self.family), output_hidden_states=True, logits_to_keep=1)
        return self._value(outputs.hidden_states[-1][:, -1])

    def _value(self, prompt_hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(prompt_hidden if self.value_gradients_to_model else prompt_hidden.detach())

    def _predict(self, observation: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        return self.forward(observation, deterministic)[0]

    def extract_features(self, obs, features_extractor=None):  # pragma: no cover - SB3 hook, unused here
        raise NotImplementedError("VLMPolicy reads images and prompts directly; it has no feature extractor")

    # ------------------------------------------------------------------ internals
    def _model_inputs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, prompts = self._unpack(obs)
        return build_inputs(self.bundle, images, prompts, self.device)

    def _unpack(self, obs: Any) -> tuple[list[np.ndarray], list[str]]:
        if not isinstance(obs, dict) or not {"image", "prompt"} <= set(obs):
            raise ValueError(
                "VLMPolicy expects dict observations with 'image' (batch, H, W, 3 uint8) and 'prompt' keys, as "
                f"make_vlm_vec_env builds; got {type(obs).__name__}"
            )
        images = torch.as_tensor(obs["image"]).detach()
        if images.dim() == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
            images = images.permute(0, 2, 3, 1)  # SB3's VecTransposeImage made them channel-first
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a batch of RGB images shaped (batch, H, W, 3), got shape {tuple(images.shape)}")
        images_np = images.round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        prompt_bytes = torch.as_tensor(obs["prompt"]).detach().cpu().numpy()
        if "tokenizer" in obs:
            fingerprints = torch.as_tensor(obs["tokenizer"]).detach().cpu().long().reshape(-1)
            expected = tokenizer_fingerprint(self.bundle.tokenizer)
            if not bool((fingerprints == expected).all()):
                raise ValueError("the observation was made for another tokenizer than this policy's model")
        return list(images_np), [decode_prompt(row) for row in prompt_bytes]

    @torch.no_grad()
    def _generate(self, inputs: dict[str, torch.Tensor], deterministic: bool):
        from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

        policy = self

        class _SamplingDistribution(LogitsProcessor):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
                return process_logits(scores, 0.0 if deterministic else policy.temperature, policy.banned_tokens)

        config = GenerationConfig(
            do_sample=not deterministic and self.temperature > 0,
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=0,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            num_beams=1,
            pad_token_id=self.bundle.tokenizer.pad_token_id if self.bundle.tokenizer.pad_token_id is not None else self.end_ids[0],
            eos_token_id=list(self.end_ids),
            return_dict_in_generate=True,
            output_logits=True,
            output_hidden_states=True,
        )
        self.vlm.eval()
        output = self.vlm.generate(**inputs, generation_config=config,
                                   logits_processor=LogitsProcessorList([_SamplingDistribution()]))
        prompt_length = inputs["input_ids"].shape[1]
        generated = output.sequences[:, prompt_length:]
        batch = generated.shape[0]
        tokens = torch.full((batch, self.max_new_tokens), self.end_ids[0], dtype=torch.long, device=generated.device)
        tokens[:, : generated.shape[1]] = generated
        logits = torch.stack(output.logits, dim=1)
        if logits.shape[1] < self.max_new_tokens:  # every answer ended early: pad the scores (masked anyway)
            pad = logits[:, -1:].expand(-1, self.max_new_tokens - logits.shape[1], -1)
            logits = torch.cat([logits, pad], dim=1)
        scores = process_logits(logits, 0.0 if deterministic else self.temperature, self.banned_tokens)
        prompt_hidden = output.hidden_states[0][-1][:, -1]
        return tokens, scores, prompt_hidden

    def _teacher_forced(self, inputs: dict[str, torch.Tensor], tokens: torch.Tensor, model: nn.Module | None = None):
        prompt_length = inputs["input_ids"].shape[1]
        kwargs = with_answer(inputs, tokens, self.family)
        outputs = (model or self.vlm)(**kwargs, output_hidden_states=True, logits_to_keep=tokens.shape[1] + 1)
        logits = outputs.logits[:, :-1]  # position P-1+j predicts answer token j
        scores = process_logits(logits, self.temperature, self.banned_tokens)
        return scores, outputs.hidden_states[-1][:, prompt_length - 1]

    def _score(self, tokens: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The paper's weighted log-probability of each answer."""
        masks = token_masks(self.bundle.tokenizer, tokens, self.end_ids)
        return weighted_sum(self._per_token(tokens, scores, masks)[0], masks, self.cot_weight)

    @staticmethod
    def _per_token(tokens: torch.Tensor, scores: torch.Tensor, masks) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy of each answer token, zero past the answer's end."""
        per_token, entropy = token_logprobs(scores, tokens)
        # -inf * 0 would be NaN: a banned token never appears where the mask is on, so zero the rest.
        valid = masks.valid.to(per_token.device)
        return per_token.masked_fill(~valid, 0.0), entropy.masked_fill(~valid, 0.0)

    # ------------------------------------------------------------------ saving
    def _saved_prefixes(self) -> tuple[str, ...] | None:
        """Which state-dict entries a checkpoint holds: everything for the tiny model (its weights exist
        nowhere else); for a real base only what training changes (LoRA / trained layers, value head)."""
        if self.model_source == TINY or self.lora_r == 0:
            return None
        return ("value_head.",)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        full = {k: v for k, v in super().state_dict(*args, **kwargs).items() if not k.startswith(REFERENCE_PREFIX)}
        if self._saved_prefixes() is None:
            return full
        trainable = {f"vlm.{name}" for name, p in self.vlm.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if k in trainable or k.startswith(self._saved_prefixes())}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        own = super().state_dict()
        unexpected = sorted(set(state_dict) - set(own))
        required = set(self.state_dict())
        missing = sorted(required - set(state_dict))
        if unexpected or (strict and missing):
            raise RuntimeError(
                f"checkpoint does not match this VLMPolicy (model {self.model_source!r}): "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            )
        try:
            return super().load_state_dict(state_dict, strict=False, assign=assign)
        except RuntimeError as error:  # e.g. a LoRA rank or value head of another size
            raise RuntimeError(f"checkpoint does not match this VLMPolicy (model {self.model_source!r}): {error}") from None

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes the adapter (peft, safetensors), the value head (safetensors) and the base's reference.

        The adapter can be merged and served without this package; ``load_pretrained`` reads it back.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.lora_r > 0:
            self.vlm.save_pretrained(directory / "adapter")
        else:
            self.vlm.save_pretrained(directory / "model", safe_serialization=True)
            self.processor.save_pretrained(directory / "model")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                  str(directory / VALUE_HEAD_FILE))
        config = {key: value for key, value in self._get_constructor_parameters().items()
                  if key not in ("observation_space", "action_space", "lr_schedule", "optimizer_class", "optimizer_kwargs")}
        config["value_head_layers"] = list(self.value_head_layers)
        (directory / POLICY_CONFIG_FILE).write_text(json.dumps(config, indent=2))
        return directory

    def load_pretrained(self, directory: str | Path) -> None:
        """Loads what :meth:`save_pretrained` wrote into this policy (same base model and LoRA shape)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / VALUE_HEAD_FILE).is_file():
            raise FileNotFoundError(f"{directory} holds no {VALUE_HEAD_FILE}: not a saved VLMPolicy")
        if self.lora_r > 0:
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            result = set_peft_model_state_dict(self.vlm, load_peft_weights(str(directory / "adapter")))
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"adapter in {directory} does not fit this model: {result.unexpected_keys[:5]}")
        else:
            from transformers import AutoModelForImageTextToText

            trained = AutoModelForImageTextToText.from_pretrained(directory / "model", local_files_only=True)
            self.vlm.load_state_dict(trained.state_dict())
        self.value_head.load_state_dict(load_file(str(directory / VALUE_HEAD_FILE)))


def _check_finite(**tensors: torch.Tensor) -> None:
    """Stops training at the first NaN/inf instead of letting PPO average it into every weight."""
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise FloatingPointError(
                f"the policy produced a non-finite {name} (NaN or inf); training stopped before it reached the "
                "weights. Lower the learning rate, raise max_grad_norm clipping, or check the model's dtype"
            )


def _check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    if not isinstance(action_space, spaces.MultiDiscrete):
        raise ValueError(
            "VLMPolicy needs the MultiDiscrete token action space of TokenActionWrapper; build the env with "
            f"vlm_policy.make_vlm_vec_env (got {action_space})"
        )
    if not isinstance(observation_space, spaces.Dict) or not {"image", "prompt", "tokenizer"} <= set(observation_space.spaces):
        raise ValueError(
            "VLMPolicy needs dict observations with 'image', 'prompt' and 'tokenizer' keys; build the env with "
            f"vlm_policy.make_vlm_vec_env (got {observation_space})"
        )


def _disable_dropout(model: nn.Module) -> None:
    """PPO's first ratio must be exactly 1: no stochastic layer may differ between rollout and update."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for config in (model.config, getattr(model.config, "text_config", None), getattr(model.config, "vision_config", None)):
        for key in ("attention_dropout", "dropout", "hidden_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob"):
            if config is not None and isinstance(getattr(config, key, None), float):
                setattr(config, key, 0.0)


def _text_hidden_size(config: Any) -> int:
    for candidate in (getattr(config, "text_config", None), config):
        size = getattr(candidate, "hidden_size", None)
        if isinstance(size, int):
            return size
    raise ValueError("cannot find the language model's hidden size in the model config")
