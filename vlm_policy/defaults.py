"""The one set of PPO defaults: ``PPO(VLMPolicy, env)`` and ``vlm-cards train`` train the same thing.

``VLMPolicy``'s keyword defaults and the ``vlm-cards train`` options both read these, so a value
changes in one place. Where the embedded tiny model and a real checkpoint need different values, a
rule here decides both (docs/defaults.md has the table).
"""

from __future__ import annotations

from gym_vlm_cards.registration import registered_id
from vlm_policy.loading import is_tiny

#: Sampling temperature of PPO's rollouts (the paper: 0.2).
TEMPERATURE = 0.3
#: The paper's lambda: weight of the thought tokens' log-probability.
COT_WEIGHT = 0.5
#: The value head's learning rate is the policy's times this.
VALUE_LR_SCALE = 10.0
#: The value loss does not train the VLM: a random value head's early errors otherwise wreck the policy.
VALUE_GRADIENTS_TO_MODEL = False
#: Weight of the KL penalty towards the model as loaded (the SFT checkpoint).
KL_COEF = 0.1
#: PPO updates the vision tower (or its adapter) too.
TRAIN_VISION = True
#: The LoRA rank of a real checkpoint; the tiny model trains every weight (rank 0).
CHECKPOINT_LORA_RANK = 16


#: A key in the state of every agent saved with these defaults: an agent without it was saved when
#: ``VLMPolicy``'s own defaults were these older ones, which its omitted settings then take.
SHARED_DEFAULTS_KEY = "shared_defaults"
LEGACY_POLICY_DEFAULTS = {"temperature": 0.2, "lora_r": 16, "train_vision": False, "value_lr_scale": 1.0,
                          "value_gradients_to_model": True, "kl_coef": 0.0}


#: Learning rates (SFT, PPO) of the tiny model, whose every weight trains, and of a checkpoint's LoRA adapter
#: (the paper's for LLaVA-1.6 7B: SFT 2e-5, PPO 1e-5).
TINY_LEARNING_RATES = (1e-3, 2.5e-5)
CHECKPOINT_LEARNING_RATES = (2e-5, 1e-5)


def learning_rates_for(model: str) -> tuple[float, float]:
    """The default (SFT, PPO) learning rates for ``model``."""
    return TINY_LEARNING_RATES if is_tiny(model) else CHECKPOINT_LEARNING_RATES


def constrain_actions_for(env_id: str | None) -> bool:
    """Whether answers are decoded among the state's legal actions by default (``constrain_actions`` None /
    ``auto``): on ALFWorld, whose admissible commands change with every state (without it the tiny model named
    no admissible command in 96.6% of its answers after SFT and DAgger: docs/alfworld.md); off for the card tasks,
    whose few fixed actions SFT teaches."""
    return bool(env_id) and registered_id(env_id).startswith("alfworld/")


def lora_rank_for(model: str, lora_r: int | None = None) -> int:
    """``lora_r`` when given; else 0 (every weight) for the tiny model, :data:`CHECKPOINT_LORA_RANK` for a
    checkpoint, whose every weight would not fit an optimizer's state beside it."""
    if lora_r is not None:
        return int(lora_r)
    return 0 if is_tiny(model) else CHECKPOINT_LORA_RANK
