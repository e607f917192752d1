"""SB3 callbacks for VLM training: what PPO's logger does not record by itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback


class VLMRolloutLogger(BaseCallback):
    """Logs the invalid-action rate and a sample chain of thought each rollout, and appends the
    rollout's success rate to ``curve_path`` (JSON lines, survives interruptions) for the plot.

    SB3 itself logs episode return and success rate (from Monitor and ``info["is_success"]``) and
    PPO's approx KL; everything reaches TensorBoard through the same logger.
    """

    def __init__(self, curve_path: str | Path | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.curve_path = Path(curve_path) if curve_path else None
        self._valid = 0
        self._steps = 0
        self._successes: list[float] = []
        self._returns: list[float] = []
        self._sample = ""

    def _on_rollout_start(self) -> None:
        self._valid = self._steps = 0
        self._successes, self._returns = [], []

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"]):
            self._steps += 1
            self._valid += bool(info.get("action_is_valid", True))
            if info.get("generated_text"):
                self._sample = info["generated_text"]
            if done:
                self._successes.append(float(info.get("is_success", False)))
                if "episode" in info:
                    self._returns.append(float(info["episode"]["r"]))
        return True

    def _on_rollout_end(self) -> None:
        invalid_rate = 1.0 - self._valid / max(self._steps, 1)
        self.logger.record("rollout/invalid_action_rate", invalid_rate)
        self.logger.record("rollout/sample_answer", self._sample)
        if self.curve_path is None:
            return
        point = {
            "timesteps": int(self.num_timesteps),
            "success_rate": float(np.mean(self._successes)) if self._successes else None,
            "episodes": len(self._successes),
            "mean_return": float(np.mean(self._returns)) if self._returns else None,
            "invalid_rate": invalid_rate,
        }
        with self.curve_path.open("a") as handle:
            handle.write(json.dumps(point) + "\n")
