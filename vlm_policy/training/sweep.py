"""``vlm-cards sweep``: the main job over several seeds, a table with mean ± sd, one plot of every curve.

    vlm-cards sweep --seeds 0 1 2 --env gym_cards/NumberLine-v0 --out-dir runs/sweep
    vlm-cards sweep --seeds 0 1 2 3 --parallel 2 ...   two runs at a time, one thread each on 2 cores

Each seed is an ordinary ``vlm-cards train`` run in ``<out-dir>/seed_<n>/`` (its own stage records,
``--resume`` and outputs), started as a child process so that parallel runs share nothing; with
``--parallel k`` the machine's cores are divided between the k runs (PyTorch oversubscribing the
cores slows every run many times over) and each run's output is appended to ``seed_<n>/train.log``.
At the end ``sweep.md`` / ``sweep.json`` hold the per-seed table and ``learning_curves.png`` the
curves, one line per seed. A seed whose run failed is reported (with its log) and left out of the
means; the command then exits non-zero.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_policy.training.configs import TrainConfig

SWEEP_TABLE = "sweep.md"
SWEEP_JSON = "sweep.json"
SWEEP_PLOT = "learning_curves.png"


@dataclass
class SweepOptions:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={
        "help": "the seeds to run, one run each (each replaces --seed; each run writes to <out-dir>/seed_<n>)"})
    parallel: int = field(default=1, metadata={
        "help": "runs at a time; the cores are divided between them (1: one after another, with progress bars)"})

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds has a seed twice: {self.seeds}")
        if any(seed < 0 for seed in self.seeds):
            raise ValueError(f"--seeds must be >= 0, got {self.seeds}")
        if self.parallel < 1:
            raise ValueError(f"--parallel must be >= 1, got {self.parallel}")


@dataclass
class SeedOutcome:
    """One seed's held-out results (None where its run failed)."""

    seed: int
    out_dir: str
    sft_success: float | None = None
    ppo_success: float | None = None
    seconds: float | None = None
    error: str | None = None
    sft_steps: int | None = None  # the SFT steps made (fewer than --sft-steps where a stop check ended SFT)

    @property
    def gain(self) -> float | None:
        if self.sft_success is None or self.ppo_success is None:
            return None
        return self.ppo_success - self.sft_success


def seed_dir(out_dir: str | Path, seed: int) -> Path:
    return Path(out_dir) / f"seed_{seed}"


def train_argv(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> list[str]:
    """``vlm-cards train`` arguments that reproduce ``config`` exactly (every setting spelled out)."""
    argv = ["train"]
    for name, value in config.settings().items():
        argv += ["--" + name.replace("_", "-"), *(map(str, value) if isinstance(value, list) else [str(value)])]
    return argv + (["--resume"] if resume else []) + (["--overwrite"] if overwrite else [])


def run_sweep(config: TrainConfig, options: SweepOptions, resume: bool = False, overwrite: bool = False) -> list[SeedOutcome]:
    """Runs ``config`` once per seed (``config.common.seed`` and ``config.run.out_dir`` are replaced), then
    writes the table and the plot into ``config.run.out_dir``. Returns one outcome per seed."""
    root = Path(config.run.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    parallel = min(options.parallel, len(options.seeds))
    threads = max(1, (os.cpu_count() or 1) // parallel)
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                               os.environ.get("PYTHONPATH", "")]))

    def one(seed: int) -> SeedOutcome:
        seed_config = config.with_settings(seed=seed, out_dir=str(seed_dir(root, seed)),
                                           progress=parallel == 1 and config.common.progress)
        Path(seed_config.run.out_dir).mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "vlm_policy", *train_argv(seed_config, resume, overwrite)]
        start = time.perf_counter()
        if parallel == 1:
            print(f"\n=== seed {seed}: {seed_config.run.out_dir}", flush=True)
            code = subprocess.call(command, env=environment)
        else:
            log = Path(seed_config.run.out_dir) / "train.log"
            with open(log, "a") as stream:  # appended: a sweep run again keeps the log of the run that trained
                stream.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n")
                stream.flush()
                code = subprocess.call(command, env=environment, stdout=stream, stderr=subprocess.STDOUT)
            print(f"seed {seed}: {'done' if code == 0 else f'failed (exit {code}), see {log}'} "
                  f"in {time.perf_counter() - start:.0f} s", flush=True)
        outcome = read_outcome(seed, seed_config.run.out_dir)
        outcome.seconds = time.perf_counter() - start
        if code != 0:
            outcome.error = f"exit status {code}"
        return outcome

    if parallel == 1:
        outcomes = [one(seed) for seed in options.seeds]
    else:
        print(f"{len(options.seeds)} seeds, {parallel} at a time, {threads} thread(s) each; logs in "
              f"{root}/seed_<n>/train.log", flush=True)
        with ThreadPoolExecutor(parallel) as pool:  # threads only wait on the child processes
            outcomes = list(pool.map(one, options.seeds))
    write_report(config, outcomes)
    return outcomes


def read_outcome(seed: int, out_dir: str | Path) -> SeedOutcome:
    """A seed's held-out success rates from its ``results.json`` (an error if it has none)."""
    from vlm_policy.checkpoints import SFT_METADATA_FILE  # here: the command line's --help starts without torch

    path = Path(out_dir) / "results.json"
    outcome = SeedOutcome(seed=seed, out_dir=str(out_dir))
    try:
        results = json.loads(path.read_text())
        outcome.sft_success = float(results["after SFT"]["success_rate"])
        outcome.ppo_success = float(results["after PPO"]["success_rate"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        outcome.error = f"no complete results in {path} ({type(error).__name__})"
    try:
        outcome.sft_steps = int(json.loads((Path(out_dir) / "sft" / SFT_METADATA_FILE).read_text())["steps_done"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # an SFT checkpoint of an older version: no count to show
    return outcome


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(outcomes: Sequence[SeedOutcome]) -> dict[str, Any]:
    """Per-stage mean ± sd (in %) over the seeds that finished."""
    done = [o for o in outcomes if o.error is None]
    stats: dict[str, Any] = {"seeds": [o.seed for o in done], "failed": [o.seed for o in outcomes if o.error]}
    for name, values in (("after SFT", [o.sft_success for o in done]), ("after PPO", [o.ppo_success for o in done]),
                         ("gain", [o.gain for o in done])):
        if values:
            mean, sd = mean_sd([100 * v for v in values])
            stats[name] = {"mean": mean, "sd": sd}
    return stats


def format_report(config: TrainConfig, outcomes: Sequence[SeedOutcome]) -> str:
    """The markdown table: one row per seed, then mean ± sd."""
    stats = summary(outcomes)
    evaluation = config.evaluation
    lines = [f"{config.task.env_id}, {evaluation.eval_episodes} held-out episodes (seeds from {evaluation.eval_seed}), "
             "greedy answers",
             "", "| seed | after SFT | after PPO | gain (points) | SFT steps | time |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        if o.error:
            lines.append(f"| {o.seed} | failed: {o.error} | | | | |")
            continue
        time_text = f"{o.seconds:.0f} s" if o.seconds is not None else ""
        steps_text = "" if o.sft_steps is None else str(o.sft_steps)
        lines.append(f"| {o.seed} | {100 * o.sft_success:.1f}% | {100 * o.ppo_success:.1f}% | {100 * o.gain:+.1f} | "
                     f"{steps_text} | {time_text} |")
    if "gain" in stats:
        sft, ppo, gain = stats["after SFT"], stats["after PPO"], stats["gain"]
        lines.append(f"| mean ± sd ({len(stats['seeds'])}) | {sft['mean']:.1f} ± {sft['sd']:.1f}% | "
                     f"{ppo['mean']:.1f} ± {ppo['sd']:.1f}% | {gain['mean']:+.1f} ± {gain['sd']:.1f} | | |")
    return "\n".join(lines) + "\n"


def write_report(config: TrainConfig, outcomes: Sequence[SeedOutcome]) -> Path:
    from vlm_policy.checkpoints import atomic_write_text

    root = Path(config.run.out_dir)
    table = format_report(config, outcomes)
    atomic_write_text(root / SWEEP_TABLE, table)
    payload = {"config": config.to_dict(), "summary": summary(outcomes),
               "seeds": [{**o.__dict__, "gain": o.gain} for o in outcomes]}
    atomic_write_text(root / SWEEP_JSON, json.dumps(payload, indent=2))
    plot_sweep(outcomes, root / SWEEP_PLOT, title=config.task.env_id)
    print("\n" + table + f"wrote {root / SWEEP_TABLE}, {root / SWEEP_JSON} and {root / SWEEP_PLOT}")
    return root / SWEEP_TABLE


def plot_sweep(outcomes: Sequence[SeedOutcome], out_path: str | Path, title: str = "") -> Path:
    """One line per seed: the sampled training episodes' success per rollout, PPO's greedy validation
    checks dashed in the same colour (when the run made them); a hollow circle at 0 for the seed's held-out
    SFT result and a star for the PPO result, at the check whose agent PPO handed over (else the last step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlm_policy.training.callbacks import BEST_AGENT_DIR, VALIDATION_RECORD, kept_best, read_validation
    from vlm_policy.training.plots import read_curve

    figure, axis = plt.subplots(figsize=(6.5, 3.8), dpi=120)
    for index, outcome in enumerate(outcomes):
        color = f"C{index % 10}"
        points = [p for p in read_curve(Path(outcome.out_dir) / "curve.jsonl") if p.get("success_rate") is not None]
        steps = [p["timesteps"] for p in points]
        axis.plot(steps, [100 * p["success_rate"] for p in points], color=color, alpha=0.8, label=f"seed {outcome.seed}")
        checks = read_validation(Path(outcome.out_dir) / VALIDATION_RECORD)
        if checks:
            axis.plot([c["timesteps"] for c in checks], [100 * c["success_rate"] for c in checks], color=color,
                      linestyle="--", marker=".", alpha=0.8)
        if outcome.sft_success is not None:
            axis.plot([0], [100 * outcome.sft_success], marker="o", markerfacecolor="none", color=color, linestyle="none")
        kept = kept_best(Path(outcome.out_dir) / BEST_AGENT_DIR) if checks else None
        if outcome.ppo_success is not None and (steps or kept):
            where = kept["timesteps"] if kept else steps[-1]
            axis.plot([where], [100 * outcome.ppo_success], marker="*", markersize=12, color=color, linestyle="none")
    axis.set_xlabel("env steps of PPO")
    axis.set_ylabel("success rate (%)")
    axis.set_ylim(-2, 102)
    axis.set_title(f"{title}\nlines: sampled training episodes; dashed: greedy validation checks;\n"
                   "o: held-out after SFT; *: held-out after PPO", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out_path)
    plt.close(figure)
    return Path(out_path)
