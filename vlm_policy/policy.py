"""VLMPolicy: a Stable-Baselines3 actor-critic policy that is a (LoRA-tuned) vision-language model.

``PPO(VLMPolicy, env, policy_kwargs={"model": "tiny"})`` fine-tunes the model end to end. The class
keeps SB3's surface only; the work is done by the objects it owns:

* :class:`~vlm_policy.distribution.TokenSequenceDistribution`: sampling and teacher-forced scoring;
* :class:`~vlm_policy.reference.KLReference`: the optional KL penalty's reference and its statistics;
* :mod:`vlm_policy.adapters`: LoRA / full training, fp32 trainable weights, gradient checkpointing;
* :mod:`vlm_policy.checkpoints`: what a saved agent holds, ``save_pretrained`` / ``load_pretrained``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from vlm_policy import checkpoints, defaults
from vlm_policy.adapters import lora_alpha_for, prepare_for_training, set_lora_alpha
from vlm_policy.distribution import TokenSequenceDistribution
from vlm_policy.env_bridge import LEGAL_ACTIONS_KEY, decode_legal_actions, decode_prompt, tokenizer_fingerprint
from vlm_policy.loading import TINY, VLMBundle, is_tiny, load_vlm, resolve_device, resolve_dtype, tiny_source_for_vocab
from vlm_policy.optim import ScaledLRAdamW
from vlm_policy.reference import KLReference, carrying_loss_term

# Arguments SB3's algorithms pass to every ActorCriticPolicy; they shape heads VLMPolicy does not build.
_SB3_ARGUMENTS_IGNORED = frozenset({
    "net_arch", "activation_fn", "ortho_init", "normalize_images", "share_features_extractor", "use_sde",
    "log_std_init", "full_std", "use_expln", "squash_output", "features_extractor_class", "features_extractor_kwargs",
})
ROLLOUT_LOGPROBS = ("auto", "generate", "recompute")
# Agents saved before lora_alpha defaulted to twice the rank used 32 whatever the rank; their state
# dicts lack the LORA_ALPHA_KEY entry that records the value in use.
LORA_ALPHA_KEY = "lora_alpha_in_use"
LEGACY_LORA_ALPHA = 32


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

    :param observation_space: given by SB3.
    :param action_space: given by SB3.
    :param lr_schedule: given by SB3.
    :param model: ``"tiny"`` (the embedded default) or a local path / HF cache id of a checkpoint.
    The defaults are those of ``vlm-cards train`` (:mod:`vlm_policy.defaults`); a setting given as None
    takes its default.

    :param temperature: sampling temperature (the paper: 0.2); 0 samples greedily.
    :param cot_weight: the paper's lambda, weight of the chain-of-thought tokens' log-probability.
    :param lora_r: LoRA rank; 0 trains every weight of the model instead (None: 0 for the tiny model, 16 for
        a checkpoint; :func:`vlm_policy.defaults.lora_rank_for`).
    :param lora_alpha: LoRA scaling numerator (default ``2 * lora_r``).
    :param lora_target_modules: Linear layers to adapt (default: every Linear of the language model).
    :param train_vision: also adapt (or, with lora_r=0, train) the vision tower and projector.
    :param value_head_layers: hidden sizes of the value MLP.
    :param value_lr_scale: the value head's learning rate is the policy's times this.
    :param value_gradients_to_model: let the value loss train the VLM too (the paper's shared trunk);
        False feeds the value head a detached hidden state.
    :param kl_coef: weight of a KL penalty towards the model as loaded (see :mod:`vlm_policy.reference`);
        0 turns it off.
    :param gradient_checkpointing: recompute activations in the backward pass; None: on for real
        checkpoints, off for the tiny model.
    :param micro_batch_size: answers per scoring forward; each chunk's forward is recomputed in the
        backward pass, so peak memory follows it rather than PPO's minibatch, and the gradient is the
        unsplit one (None: whole batches). Generation always takes the whole rollout batch.
    :param rollout_logprobs: where PPO's old log-probabilities and values come from: ``"generate"`` (the
        generation's own logits, no second pass), ``"recompute"`` (one teacher-forced pass, the same
        computation as the update's, right after generation), ``"auto"``: recompute unless the model
        computes in float32 (where the two agree to 1e-5).
    :param merge_for_rollouts: generate with the LoRA adapter merged into a copy of the base weights (faster
        decoding; the base weights are untouched); scoring and the update use the unmerged model. None: on,
        except for a 4-bit base, which cannot hold a merged adapter exactly (True there is refused).
    :param rollout_compile: generate on a static KV cache with a ``torch.compile``-d decoding step (the first
        rollouts pay the compilation; the same tokens as eager decoding in float32).
    :param compute_entropy: compute the answers' entropy in ``evaluate_actions`` (needed for an entropy
        bonus, ``ent_coef > 0``; without it SB3 uses ``-log_prob`` in its entropy term and log).
    :param constrain_actions: legal-action decoding (:mod:`vlm_policy.legal_actions`): inside an answer's action
        value only tokens that continue or close one of the observation's legal actions are sampled, and the
        update scores with the same masks (the env must carry them: ``make_vlm_vec_env(constrain_actions=True)``).
        None: on when the observations carry the legal actions (``make_vlm_vec_env`` does so on ALFWorld).
    :param dtype: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"float32"``, ``"bfloat16"``: the compute dtype;
        optimised weights are float32 whatever it is.
    :param load_in_4bit: load the base weights in 4 bits with bitsandbytes (CUDA only).
    :param device: where the model is loaded (``"auto"``: CUDA when available, as SB3's own ``"auto"``);
        SB3 then moves the policy to the algorithm's ``device=``.
    :param seed: seed of the tiny model's random initialisation.
    :param env_id: the task the policy is trained on; passed in ``policy_kwargs`` it is saved with the
        agent, and :func:`vlm_policy.agents.load_agent` then refuses to load it with another task's env.
    :param env_settings: how the observations it is trained on are made (``{"prompt_style": "cot",
        "history_length": 2}``); passed in ``policy_kwargs`` it is saved with the agent, and ``vlm-cards eval`` /
        ``play`` build their env the same way unless told otherwise. The policy itself does not read it.
    :param optimizer_class: as in SB3 (default :class:`ScaledLRAdamW`, eps 1e-5).
    :param optimizer_kwargs: as in SB3.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        model: str = TINY,
        temperature: float | None = None,
        cot_weight: float = defaults.COT_WEIGHT,
        lora_r: int | None = None,
        lora_alpha: int | None = None,
        lora_target_modules: Sequence[str] | None = None,
        train_vision: bool | None = None,
        value_head_layers: Sequence[int] = (1024, 512),
        value_lr_scale: float | None = None,
        value_gradients_to_model: bool | None = None,
        kl_coef: float | None = None,
        gradient_checkpointing: bool | None = None,
        micro_batch_size: int | None = None,
        rollout_logprobs: str = "auto",
        merge_for_rollouts: bool | None = None,
        rollout_compile: bool = False,
        compute_entropy: bool = True,
        constrain_actions: bool | None = None,
        dtype: str = "auto",
        load_in_4bit: bool = False,
        device: str = "auto",
        seed: int = 0,
        env_id: str | None = None,
        env_settings: dict[str, Any] | None = None,
        optimizer_class: type[torch.optim.Optimizer] = ScaledLRAdamW,
        optimizer_kwargs: dict[str, Any] | None = None,
        **unused: Any,
    ) -> None:
        if constrain_actions is None:  # on where the env carries the legal actions (make_vlm_vec_env's own rule)
            constrain_actions = isinstance(observation_space, spaces.Dict) and LEGAL_ACTIONS_KEY in observation_space.spaces
        _check_spaces(observation_space, action_space, constrain_actions)
        given = {"temperature": temperature, "lora_r": lora_r, "train_vision": train_vision,
                 "value_lr_scale": value_lr_scale, "value_gradients_to_model": value_gradients_to_model,
                 "kl_coef": kl_coef}
        #: The settings left to the shared defaults (an agent saved before them had other ones: load_state_dict).
        self.defaulted = {name for name, value in given.items() if value is None}
        temperature = defaults.TEMPERATURE if temperature is None else temperature
        train_vision = defaults.TRAIN_VISION if train_vision is None else train_vision
        value_lr_scale = defaults.VALUE_LR_SCALE if value_lr_scale is None else value_lr_scale
        value_gradients_to_model = defaults.VALUE_GRADIENTS_TO_MODEL if value_gradients_to_model is None \
            else value_gradients_to_model
        kl_coef = defaults.KL_COEF if kl_coef is None else kl_coef
        if not isinstance(model, str):
            raise TypeError(f"model must be 'tiny' or a path (a str), got {type(model).__name__}")
        if temperature < 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if cot_weight < 0:
            raise ValueError(f"cot_weight must be >= 0, got {cot_weight}")
        if kl_coef < 0 or not math.isfinite(kl_coef):
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 (or None for whole batches), got {micro_batch_size}")
        if rollout_logprobs not in ROLLOUT_LOGPROBS:
            raise ValueError(f"rollout_logprobs must be one of {ROLLOUT_LOGPROBS}, got {rollout_logprobs!r}")
        if merge_for_rollouts and load_in_4bit:
            raise ValueError("a 4-bit base cannot hold a merged LoRA adapter exactly; pass merge_for_rollouts=False "
                             "(or leave it None, which generates unmerged on a 4-bit base)")
        unknown = set(unused) - _SB3_ARGUMENTS_IGNORED
        if unknown:
            raise TypeError(f"VLMPolicy got unknown arguments {sorted(unknown)}")
        if unused.get("use_sde"):
            raise ValueError("VLMPolicy samples tokens; gSDE (use_sde=True) does not apply")
        self.model_source = model
        self.temperature = float(temperature)
        self.cot_weight = float(cot_weight)
        self.lora_r = defaults.lora_rank_for(model, lora_r)
        self.lora_alpha = lora_alpha
        self.lora_target_modules = list(lora_target_modules) if lora_target_modules else None
        self.train_vision = bool(train_vision)
        self.value_head_layers = tuple(int(v) for v in value_head_layers)
        self.value_lr_scale = float(value_lr_scale)
        self.value_gradients_to_model = bool(value_gradients_to_model)
        self.kl_coef = float(kl_coef)
        self.gradient_checkpointing = (not is_tiny(model)) if gradient_checkpointing is None else bool(gradient_checkpointing)
        self.micro_batch_size = micro_batch_size
        self.rollout_logprobs = rollout_logprobs
        self.merge_for_rollouts = (not load_in_4bit) if merge_for_rollouts is None else bool(merge_for_rollouts)
        self.rollout_compile = bool(rollout_compile)
        self.compute_entropy = bool(compute_entropy)
        self.constrain_actions = bool(constrain_actions)
        self.dtype_name = dtype
        self.load_in_4bit = bool(load_in_4bit)
        self.load_device = resolve_device(device)
        self.seed = int(seed)
        self.env_id = env_id
        self.env_settings = dict(env_settings or {})
        self.max_new_tokens = int(len(action_space.nvec))
        #: Set by a data-parallel run (vlm_policy.distributed) while it trains: the NaN guard then agrees
        #: across processes, and each minibatch's log-probabilities are kept for the agreed early stop.
        self.agree_across_processes = False
        self.last_log_prob: torch.Tensor | None = None
        kwargs = {"eps": 1e-5, "weight_decay": 0.0}
        kwargs.update(optimizer_kwargs or {})
        super().__init__(observation_space, action_space, lr_schedule, ortho_init=False, normalize_images=False,
                         optimizer_class=optimizer_class, optimizer_kwargs=kwargs)

    # ------------------------------------------------------------------ construction
    def _build(self, lr_schedule: Schedule) -> None:
        """Loads the VLM, makes it trainable, adds the value head and the optimizer (SB3's heads are not
        built: a vocab x tokens linear layer would hold 100M+ useless parameters)."""
        self.compute_dtype = resolve_dtype(self.dtype_name, self.load_device)
        # An agent saved by the tiny model's version 1 says "tiny": its vocabulary tells the version.
        source = tiny_source_for_vocab(self.model_source, int(self.action_space.nvec[0]))
        bundle = load_vlm(source, dtype=self.compute_dtype, device=self.load_device,
                          load_in_4bit=self.load_in_4bit, seed=self.seed)
        self._check_tokenizer(bundle)
        self.family = bundle.family
        self.processor = bundle.processor
        _disable_dropout(bundle.model)
        self.kl_reference = KLReference(bundle.model, uses_adapter=self.lora_r > 0) if self.kl_coef > 0 else None
        self.vlm = prepare_for_training(bundle.model, lora_r=self.lora_r, lora_alpha=self.lora_alpha,
                                        train_vision=self.train_vision, target_modules=self.lora_target_modules,
                                        gradient_checkpointing=self.gradient_checkpointing)
        self.bundle = VLMBundle(model=self.vlm, processor=bundle.processor, source=bundle.source, family=bundle.family)
        self.register_buffer(LORA_ALPHA_KEY, torch.tensor(lora_alpha_for(self.lora_r, self.lora_alpha)))
        self.register_buffer(defaults.SHARED_DEFAULTS_KEY, torch.tensor(1))  # see load_state_dict
        self.answer_distribution = TokenSequenceDistribution.for_bundle(
            self.bundle, self.temperature, self.max_new_tokens, self.micro_batch_size, self.compute_dtype,
            merge_adapter=self.merge_for_rollouts, compile_decoding=self.rollout_compile)
        self.end_ids = self.answer_distribution.end_ids
        self.value_head = ValueHead(_text_hidden_size(bundle.model.config), self.value_head_layers)
        groups = [
            {"params": [p for p in self.vlm.parameters() if p.requires_grad]},
            {"params": list(self.value_head.parameters()), "lr_scale": self.value_lr_scale},
        ]
        self.optimizer = self.optimizer_class(groups, lr=lr_schedule(1), **self.optimizer_kwargs)
        if not self.load_in_4bit:  # bitsandbytes places 4-bit weights itself
            self.to(self.load_device)
        else:
            self.value_head.to(self.load_device)

    @property
    def banned_tokens(self) -> torch.Tensor:
        """Bool mask over the vocabulary of ids never sampled (special and image tokens)."""
        return self.answer_distribution.banned

    @property
    def recomputes_rollout_logprobs(self) -> bool:
        if self.rollout_logprobs == "auto":
            return self.compute_dtype != torch.float32
        return self.rollout_logprobs == "recompute"

    def _check_tokenizer(self, bundle: VLMBundle) -> None:
        expected = int(self.observation_space["tokenizer"].low[0])
        actual = tokenizer_fingerprint(bundle.tokenizer)
        if expected != actual:
            raise ValueError(
                f"the env decodes actions with a different tokenizer than model {self.model_source!r} uses "
                f"(fingerprints {expected} vs {actual}); pass the same model= to make_vlm_vec_env and to the policy"
            )
        if len(bundle.tokenizer) != int(self.action_space.nvec[0]):
            raise ValueError(f"action space vocabulary {int(self.action_space.nvec[0])} != tokenizer size "
                             f"{len(bundle.tokenizer)}; build the env with the policy's model")

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            model=self.model_source, temperature=self.temperature, cot_weight=self.cot_weight, lora_r=self.lora_r,
            lora_alpha=self.lora_alpha, lora_target_modules=self.lora_target_modules, train_vision=self.train_vision,
            value_head_layers=self.value_head_layers, value_lr_scale=self.value_lr_scale,
            value_gradients_to_model=self.value_gradients_to_model, kl_coef=self.kl_coef,
            gradient_checkpointing=self.gradient_checkpointing, micro_batch_size=self.micro_batch_size,
            rollout_logprobs=self.rollout_logprobs, merge_for_rollouts=self.merge_for_rollouts,
            rollout_compile=self.rollout_compile, compute_entropy=self.compute_entropy,
            constrain_actions=self.constrain_actions, dtype=self.dtype_name,
            load_in_4bit=self.load_in_4bit, seed=self.seed,
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

    @torch.no_grad()
    def forward(self, obs: dict[str, torch.Tensor], deterministic: bool = False):
        """Samples answers for a batch of observations: (token ids, values, log-probabilities)."""
        images, prompts = self._unpack(obs)
        legal = self._legal_actions(obs)
        if self.recomputes_rollout_logprobs:  # score with the update's own forward, right after generation
            tokens = self.answer_distribution.generate(images, prompts, self.device, deterministic, legal=legal)
            scored = self.answer_distribution.score(images, prompts, tokens, self.device, with_entropy=False,
                                                    legal=legal)
        else:
            scored = self.answer_distribution.sample(images, prompts, self.device, deterministic, legal=legal)
        log_prob = scored.log_prob(self.cot_weight)
        values = self.value_head(scored.prompt_hidden)
        _check_finite(self.agree_across_processes, values=values, log_prob=log_prob)
        return scored.tokens, values, log_prob

    def evaluate_actions(self, obs: dict[str, torch.Tensor], actions: torch.Tensor):
        """Values, log-probabilities and entropies (None without ``compute_entropy``) of given answers.

        With ``kl_coef > 0`` the returned log-probabilities also carry the gradient of the KL penalty
        (their values are unchanged; see :func:`vlm_policy.reference.carrying_loss_term`).
        """
        images, prompts = self._unpack(obs)
        legal = self._legal_actions(obs)
        tokens = actions.round().long().to(self.device)
        scored = self.answer_distribution.score(images, prompts, tokens, self.device, with_entropy=self.compute_entropy,
                                                legal=legal)
        log_prob = scored.log_prob(self.cot_weight)
        values = self._value(scored.prompt_hidden)
        _check_finite(self.agree_across_processes, values=values, log_prob=log_prob)
        self.last_log_prob = log_prob.detach()  # read by a data-parallel run's agreed early stop
        if self.kl_reference is not None:
            kl = self.kl_reference.kl(self.answer_distribution, obs, images, prompts, tokens, scored.per_token,
                                      scored.masks.valid, legal=legal)
            log_prob = carrying_loss_term(log_prob, self.kl_coef * kl)
        return values, log_prob, scored.weighted_entropy(self.cot_weight)

    def predict_values(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Values from one forward over the prompts (no generation)."""
        images, prompts = self._unpack(obs)
        return self.value_head(self.answer_distribution.prompt_hidden(images, prompts, self.device))

    def _value(self, prompt_hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(prompt_hidden if self.value_gradients_to_model else prompt_hidden.detach())

    def _predict(self, observation: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        images, prompts = self._unpack(observation)
        return self.answer_distribution.generate(images, prompts, self.device, deterministic,
                                                 legal=self._legal_actions(observation))

    @torch.no_grad()
    def answer(self, images: Sequence[np.ndarray], prompts: Sequence[str], deterministic: bool = True,
               legal_actions: Sequence[Sequence[str]] | None = None) -> list[str]:
        """The model's answers as text to raw (image, prompt) pairs: greedy by default, else sampled at the
        policy's temperature. The images are H x W x 3 uint8 arrays, best rendered at the size the policy was
        trained on (the env's ``image_size``), which is what the model learned to read. With
        ``legal_actions`` (a list per pair) each answer's action value names one of its own.
        """
        from vlm_policy.logprobs import answer_text

        arrays = [np.asarray(image, dtype=np.uint8) for image in images]
        if any(a.ndim != 3 or a.shape[-1] != 3 for a in arrays):
            raise ValueError("answer() takes RGB images shaped (H, W, 3)")
        self.set_training_mode(False)
        legal = None if legal_actions is None else [list(actions) for actions in legal_actions]
        tokens = self.answer_distribution.generate(arrays, list(prompts), self.device, deterministic, legal=legal)
        return [answer_text(self.bundle.tokenizer, row, self.end_ids) for row in tokens.tolist()]

    def extract_features(self, obs, features_extractor=None):  # pragma: no cover - SB3 hook, unused here
        raise NotImplementedError("VLMPolicy reads images and prompts directly; it has no feature extractor")

    def _legal_actions(self, obs: Any) -> list[list[str]] | None:
        """Each observation's legal actions when the policy constrains its answers to them, else None."""
        if not self.constrain_actions:
            return None
        if not isinstance(obs, dict) or LEGAL_ACTIONS_KEY not in obs:
            raise ValueError("VLMPolicy(constrain_actions=True) needs the legal actions in the observation; make the "
                             "env with make_vlm_vec_env(..., constrain_actions=True)")
        return [decode_legal_actions(row) for row in torch.as_tensor(obs[LEGAL_ACTIONS_KEY]).detach().cpu().numpy()]

    def _unpack(self, obs: Any) -> tuple[list[np.ndarray], list[str]]:
        """The images (uint8, H x W x 3) and prompt texts of a batch of observations."""
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

    # ------------------------------------------------------------------ saving (see vlm_policy.checkpoints)
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return checkpoints.agent_state(self, super().state_dict(*args, **kwargs))

    def _take_legacy_defaults(self) -> None:
        """An agent saved before the shared defaults omits the settings it left to ``VLMPolicy``'s defaults of
        then: those this policy defaulted take the old values, and the model is rebuilt when they change it."""
        changed = {name: value for name, value in defaults.LEGACY_POLICY_DEFAULTS.items()
                   if name in self.defaulted and getattr(self, name) != value}
        self.defaulted -= set(changed)
        if not changed:
            return
        for name, value in changed.items():
            setattr(self, name, value)
        learning_rate = self.optimizer.param_groups[0]["lr"]
        device = self.device
        self._build(lambda _: learning_rate)
        self.to(device)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        if defaults.SHARED_DEFAULTS_KEY not in state_dict:
            self._take_legacy_defaults()
        own = super().state_dict()
        if LORA_ALPHA_KEY not in state_dict and self.lora_r > 0 and self.lora_alpha is None:
            self._use_legacy_lora_alpha()
        state_dict = {LORA_ALPHA_KEY: getattr(self, LORA_ALPHA_KEY),
                      defaults.SHARED_DEFAULTS_KEY: getattr(self, defaults.SHARED_DEFAULTS_KEY), **state_dict}
        unexpected = sorted(set(state_dict) - set(own))
        missing = sorted(set(self.state_dict()) - set(state_dict))
        if unexpected or (strict and missing):
            raise RuntimeError(
                f"checkpoint does not match this VLMPolicy (model {self.model_source!r}): "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            )
        try:
            return super().load_state_dict(state_dict, strict=False, assign=assign)
        except RuntimeError as error:  # e.g. a LoRA rank or value head of another size
            raise RuntimeError(f"checkpoint does not match this VLMPolicy (model {self.model_source!r}): {error}") from None

    def _use_legacy_lora_alpha(self) -> None:
        """An agent saved when the default was ``lora_alpha=32``: scale its adapter as it was trained."""
        set_lora_alpha(self.vlm, LEGACY_LORA_ALPHA)
        self.lora_alpha = LEGACY_LORA_ALPHA
        getattr(self, LORA_ALPHA_KEY).fill_(LEGACY_LORA_ALPHA)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes the adapter, the value head and the settings (see :func:`vlm_policy.checkpoints.save_pretrained`)."""
        return checkpoints.save_pretrained(self, directory)

    def load_pretrained(self, directory: str | Path) -> None:
        """Reads what :meth:`save_pretrained` wrote (same base model and LoRA shape)."""
        checkpoints.load_pretrained(self, directory)


def _check_finite(agree: bool = False, **tensors: torch.Tensor) -> None:
    """Stops training at the first NaN/inf instead of letting PPO average it into every weight.

    With ``agree`` (a data-parallel run) every process stops when any one sees a non-finite value:
    one process stopping alone would leave the others waiting in the next all-reduce.
    """
    from vlm_policy.distributed import any_process

    bad = {name: not bool(torch.isfinite(tensor).all()) for name, tensor in tensors.items()}
    if agree:
        bad = {name: any_process(flag) for name, flag in bad.items()}
    for name, is_bad in bad.items():
        if is_bad:
            raise FloatingPointError(
                f"the policy produced a non-finite {name} (NaN or inf); training stopped before it reached the "
                "weights. Lower the learning rate, raise max_grad_norm clipping, or check the model's dtype"
            )


def _check_spaces(observation_space: spaces.Space, action_space: spaces.Space, constrain_actions: bool = False) -> None:
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
    if constrain_actions and LEGAL_ACTIONS_KEY not in observation_space.spaces:
        raise ValueError("VLMPolicy(constrain_actions=True) needs the legal actions in the observation; make the env "
                         "with make_vlm_vec_env(..., constrain_actions=True)")


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
