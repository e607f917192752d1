"""Exploring where greedy play would loop: a hotter sampling temperature for the rollout steps whose state
the episode has met before.

PPO reinforces only what its sampling writes. A confidently wrong answer (the SFT model reads "5 is smaller
than 4" and adds one at the line's end) is sampled again and again: the clamped move leaves the state as it
was, every step costs -1, and the policy gradient of an answer whose probability is near 1 is near 0, so the
mistake stays, and greedy play loops on it until the step limit. On a task whose steps draw nothing
(:meth:`gym_vlm_cards.text_env.TextActionEnv.loop_key`), a state met twice in an episode marks such a
loop; sampling that step at ``loop_temperature`` (above the policy's) lets the rollouts try other answers
exactly there, and an answer that escapes is rewarded. Greedy play is unchanged (the arg-max does not
depend on the temperature); the gradient the escapes give moves it.

PPO stays on-policy: SB3 keeps nothing per step besides the observation, so two pieces carry the
temperature from the rollout to the update. :class:`LoopTemperatureCallback` follows each env's states
and sets the policy's :attr:`~vlm_policy.policy.VLMPolicy.rollout_temperatures` for its next forward;
:class:`TemperatureRolloutBuffer` records the temperature each step was sampled at and hands it to
``evaluate_actions`` under the observation key :data:`SAMPLING_TEMPERATURE`, where the ratio and the KL
penalty are then taken at it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3.common.buffers import DictRolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback

#: The observation key under which the update receives each sample's sampling temperature.
SAMPLING_TEMPERATURE = "sampling_temperature"


class LoopTemperatureCallback(BaseCallback):
    """Sets each env's sampling temperature for the next rollout step: ``loop_temperature`` where the env's
    state (``loop_key``) was already met in its episode, the policy's own elsewhere.

    :param loop_temperature: the temperature of a step in a state met before (> 0).
    """

    def __init__(self, loop_temperature: float) -> None:
        super().__init__()
        if loop_temperature <= 0:
            raise ValueError(f"loop_temperature must be > 0, got {loop_temperature}")
        self.loop_temperature = float(loop_temperature)
        self.seen: list[set[str]] = []
        #: Rollout steps whose next step was set to the loop temperature, for logs and tests.
        self.hot_steps = 0
        self._rollout_hot, self._rollout_steps = 0, 0

    def _keys(self) -> list[str | None]:
        return list(self.training_env.env_method("loop_key"))

    def _on_training_start(self) -> None:
        # Each env's current state starts its record (a resumed run forgets the states met before it).
        self.seen = [set() if key is None else {key} for key in self._keys()]
        self.model.policy.rollout_temperatures = None

    def _on_step(self) -> bool:
        keys, dones = self._keys(), self.locals["dones"]
        base = self.model.policy.answer_distribution.temperature
        temperatures = []
        for index, (key, done) in enumerate(zip(keys, dones)):
            if done:  # the env has reset: its new observation starts a new episode
                self.seen[index] = set()
            looped = key is not None and key in self.seen[index]
            if key is not None:
                self.seen[index].add(key)
            temperatures.append(self.loop_temperature if looped else base)
        hot = sum(t != base for t in temperatures)
        self.hot_steps += hot
        self._rollout_hot += hot
        self._rollout_steps += len(temperatures)
        self.model.policy.rollout_temperatures = torch.tensor(temperatures, dtype=torch.float32)
        return True

    def _on_rollout_start(self) -> None:
        self._rollout_hot, self._rollout_steps = 0, 0

    def _on_rollout_end(self) -> None:
        # The share of the next steps chosen hot: TensorBoard's rollout/loop_temperature_share.
        self.logger.record("rollout/loop_temperature_share", self._rollout_hot / max(self._rollout_steps, 1))

    def _on_training_end(self) -> None:
        self.model.policy.rollout_temperatures = None


class TemperatureRolloutBuffer(DictRolloutBuffer):
    """SB3's dict rollout buffer that also records the temperature each step was sampled at (the policy's
    ``last_temperatures``, or its own temperature) and returns it among the observations of every sample
    under :data:`SAMPLING_TEMPERATURE`.

    :param policy: the :class:`~vlm_policy.policy.VLMPolicy` whose forward sampled the steps added.
    Other parameters as :class:`DictRolloutBuffer`'s.
    """

    def __init__(self, *args: Any, policy: Any, **kwargs: Any) -> None:
        self.policy = policy
        super().__init__(*args, **kwargs)

    @classmethod
    def replacing(cls, algorithm: Any) -> TemperatureRolloutBuffer:
        """A buffer like ``algorithm``'s own (an SB3 PPO), for its policy."""
        own = algorithm.rollout_buffer
        return cls(own.buffer_size, own.observation_space, own.action_space, device=own.device,
                   gae_lambda=own.gae_lambda, gamma=own.gamma, n_envs=own.n_envs, policy=algorithm.policy)

    def reset(self) -> None:
        super().reset()
        self.temperatures = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)

    def add(self, *args: Any, **kwargs: Any) -> None:
        used = self.policy.last_temperatures
        if used is None:
            self.temperatures[self.pos] = self.policy.answer_distribution.temperature
        else:
            self.temperatures[self.pos] = torch.as_tensor(used).detach().cpu().numpy()
        super().add(*args, **kwargs)

    def get(self, batch_size: int | None = None):
        if not self.generator_ready:
            self.temperatures = self.swap_and_flatten(self.temperatures)
        yield from super().get(batch_size)

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None):
        samples = super()._get_samples(batch_inds, env)
        samples.observations[SAMPLING_TEMPERATURE] = self.to_torch(self.temperatures[batch_inds].reshape(-1))
        return samples
