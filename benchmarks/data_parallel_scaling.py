"""PPO env-steps/s of the tiny model with 1 process and with N data-parallel processes, side by side.

    python benchmarks/data_parallel_scaling.py --model runs/numberline/sft   # 1 and 2 processes, 1 thread each (CPU, gloo)
    python benchmarks/data_parallel_scaling.py --processes 1 2 4 8 --device cuda   # one GPU per process (NCCL)

Each setting is a fresh ``torchrun`` (or plain) run of the same PPO configuration as the main job (8 envs x 32
steps per process, minibatch 32, 2 epochs, KL penalty on), without the ``target_kl`` early stop so that every
setting does the same work per update: one warm-up update that is not timed, then ``--updates`` timed ones.
Reported: env steps of all processes per second, and the speed-up over 1 process. Weak scaling: each process
adds its own rollouts, so N processes make N times the env steps per update.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    import torch
    from stable_baselines3 import PPO

    from vlm_policy import VLMPolicy, distributed, make_vlm_vec_env

    context = distributed.init_distributed(args.device)
    torch.set_num_threads(args.threads)
    device = distributed.device_for(context, args.device)
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=8, model=args.model, seed=1 + 100_000 * context.rank,
                           max_new_tokens=40)
    # No early stop: every setting does the same work per update (16 minibatch steps), whatever its KL.
    model = PPO(VLMPolicy, env, n_steps=32, batch_size=32, n_epochs=2, learning_rate=5e-5, seed=context.rank,
                device=device, target_kl=None,
                policy_kwargs={"model": args.model, "lora_r": 0, "train_vision": True, "kl_coef": 0.1,
                               "temperature": 0.5, "device": device})
    per_update = 8 * 32
    with distributed.data_parallel(model, None):
        model.learn(per_update)  # warm-up: first allocations, caches
        distributed.barrier()
        start = time.perf_counter()
        model.learn(per_update * args.updates, reset_num_timesteps=False)
        distributed.barrier()
        seconds = time.perf_counter() - start
    if context.is_main:
        steps = per_update * args.updates * context.world_size
        Path(args.out).write_text(json.dumps({"processes": context.world_size, "env_steps": steps, "seconds": seconds}))
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--updates", type=int, default=3, help="timed PPO updates per run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="tiny", help="'tiny' (random weights) or an SFT checkpoint, e.g. runs/numberline/sft")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    environment = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                       PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    rows = []
    for processes in args.processes:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "result.json"
            flags = ["--child", "--out", str(out), "--updates", str(args.updates), "--threads", str(args.threads),
                     "--device", args.device, "--model", args.model]
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                f"--nproc-per-node={processes}"] if processes > 1 else [
                sys.executable]
            subprocess.run([*launcher, __file__, *flags], env=environment, check=True, stdout=subprocess.DEVNULL)
            rows.append(json.loads(out.read_text()))
    base = rows[0]["env_steps"] / rows[0]["seconds"]
    print(f"PPO on gym_cards/NumberLine-v0, model {args.model}, {args.device}, {args.threads} thread(s) per process, "
          f"{args.updates} timed updates of 8 envs x 32 steps per process")
    print("| processes | env steps | seconds | env steps/s | speed-up |\n|---|---|---|---|---|")
    for row in rows:
        rate = row["env_steps"] / row["seconds"]
        print(f"| {row['processes']} | {row['env_steps']} | {row['seconds']:.1f} | {rate:.1f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
