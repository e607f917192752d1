"""The main job's pictures: the learning curve and a strip of one episode's frames and thoughts."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from vlm_policy.training.evaluation import EpisodeRecord  # noqa: E402


def read_curve(curve_path: str | Path) -> list[dict]:
    """The rollout points of ``curve.jsonl``, one per env-step count (the last written wins: a resumed
    run redoes the rollouts after its checkpoint), sorted; a line torn by a kill is skipped."""
    from vlm_policy.training.callbacks import read_json_lines

    points = {point["timesteps"]: point for point in read_json_lines(curve_path, {"timesteps": int})}
    return [points[steps] for steps in sorted(points)]


def plot_learning_curve(curve_path: str | Path, out_path: str | Path, sft_success: float | None = None,
                        title: str = "", ppo_success: float | None = None, validation: list[dict] | None = None,
                        chosen_steps: int | None = None) -> Path:
    """Success rate of the training episodes per PPO rollout, against env steps.

    ``sft_success`` (a dashed line at the start level) and ``ppo_success`` (a star) are the held-out
    greedy results, so the noisy sampled training curve can be read against both. ``validation`` (PPO's
    greedy checks, ``{"timesteps", "success_rate"}``) is drawn as a second line; the star stands at
    ``chosen_steps`` (the check whose agent PPO handed over), else at the last step.
    """
    points = [p for p in read_curve(curve_path) if p.get("success_rate") is not None]
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=120)
    if points:
        axis.plot([p["timesteps"] for p in points], [100 * p["success_rate"] for p in points], marker="o",
                  label="PPO training episodes (sampled)")
    if validation:
        axis.plot([p["timesteps"] for p in validation], [100 * p["success_rate"] for p in validation], marker="s",
                  color="tab:green", label="validation episodes (greedy)")
    if sft_success is not None:
        axis.axhline(100 * sft_success, color="gray", linestyle="--", label="after SFT (held-out, greedy)")
    if ppo_success is not None:
        where = chosen_steps if chosen_steps is not None else points[-1]["timesteps"] if points else 0
        axis.plot([where], [100 * ppo_success], marker="*", markersize=14,
                  color="tab:red", linestyle="none", label="after PPO (held-out, greedy)")
    axis.set_xlabel("env steps of PPO")
    axis.set_ylabel("success rate (%)")
    axis.set_ylim(-2, 102)
    axis.set_title(title, pad=36)  # above the legend's two rows
    axis.grid(alpha=0.3)
    # Above the axes, so that it never hides a point of the curve.
    axis.legend(loc="lower center", bbox_to_anchor=(0.5, 1.02), ncol=2, fontsize=7, frameon=False)
    figure.tight_layout()
    figure.savefig(out_path)
    plt.close(figure)
    return Path(out_path)


def plot_episode_strip(records: Sequence[EpisodeRecord], out_path: str | Path, title: str = "",
                       max_frames: int = 12) -> Path:
    """Episodes step by step, one row each (the pipeline shows a won and a lost one): every frame the agent saw,
    enlarged with its pixels kept sharp, and the answer it wrote under it, wrapped (at most ``max_frames`` steps
    a row; a longer episode's row says how many steps it had)."""
    columns = max(1, min(max_frames, max(len(r.answers) for r in records)))
    figure, axes = plt.subplots(len(records), columns, figsize=(max(2.6 * columns, 6.0), 4.4 * len(records)),
                                dpi=110, squeeze=False)
    for row, record in enumerate(records):
        for column in range(columns):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column >= len(record.answers):
                axis.axis("off")
                continue
            axis.imshow(record.frames[column], interpolation="nearest")
            caption = "\n".join(textwrap.wrap(record.answers[column] or "(empty answer)", 30)[:9])
            axis.set_title(f"step {column + 1}, reward {record.rewards[column]:+g}", fontsize=9)
            axis.text(0.5, -0.04, caption, transform=axis.transAxes, ha="center", va="top", fontsize=7,
                      family="monospace")
        steps = len(record.answers)
        shown = f", first {columns} of {steps} steps" if steps > columns else f", {steps} step{'s' * (steps != 1)}"
        axes[row][0].set_ylabel(f"{'won' if record.success else 'not won'}{shown}", fontsize=10)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(out_path)
    plt.close(figure)
    return Path(out_path)
