"""How SFT's validation measures move step by step: where to stop SFT so that PPO has room.

    python benchmarks/sft_trajectory.py --env gym_cards/NumberLine-v0 --seed 0 --sft-steps 150 --out-dir runs/traj

Runs the main job's demonstrations and SFT (any ``vlm-cards train`` option) without stopping, and every
``--sft-check-every`` steps prints and appends to ``OUT_DIR/trajectory.jsonl`` the two measures SFT can
stop on: the share of the validation episodes greedy answers win (``success``) and the share of the
oracle's frames on which sampling at ``--temperature`` writes the oracle's whole answer with at least
1% probability (``reach``). A model that wins without reading the image (NumberLine's "always move
one way" policies win up to ~80%) has a low reach; PPO cannot lift it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    from vlm_policy.training.cli import parse
    from vlm_policy.training.configs import TrainConfig
    from vlm_policy.training.demos import read_demonstrations
    from vlm_policy.training.pipeline import Pipeline
    from vlm_policy.training.sft import describe_measures, run_sft

    _, groups = parse(["train", *(sys.argv[1:] if argv is None else argv)])
    config = TrainConfig.from_groups(*groups[:-1])
    pipeline = Pipeline(config)
    out = Path(config.run.out_dir)
    demos = pipeline.demos.make()
    measure = pipeline.sft.validation(pipeline.demos.answer_budget(demos))
    log = out / "trajectory.jsonl"
    log.unlink(missing_ok=True)
    step = 0

    def record(bundle, names) -> dict[str, float]:
        nonlocal step
        step += config.sft.sft_check_every
        measures = measure(bundle, ["success", "reach"])
        print(f"SFT step {step}: {describe_measures(measures)}", flush=True)
        with log.open("a") as handle:
            handle.write(json.dumps({"step": step, **measures}) + "\n")
        return {name: 0.0 for name in names}  # never stops: the whole trajectory is measured

    # A success target no check returns makes SFT check at every --sft-check-every steps and never stop.
    sft = replace(config.sft, sft_stop_success=1.0, sft_stop_reach=0.0)
    run_sft(read_demonstrations(demos), out / "sft", sft=sft, model=config.model,
            common=config.common, validation=record)
    print(f"wrote {log}")
    return log


if __name__ == "__main__":
    main()
