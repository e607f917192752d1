"""Env-steps/s of VLMPolicy's batched single-pass rollout against the reference's structure.

    python benchmarks/rollout_throughput.py [--n-envs 8] [--steps 6] [--max-new-tokens 32] [--model tiny]

* batched: one ``generate`` over all envs gives tokens, log-probs and values (VLMPolicy.forward);
* reference: each env generated alone (batch 1), then a second forward pass to score the answer,
  as the RL4VLM code does.

Both run on the same model and envs; each mode runs in its own process so that its peak RSS is its
own. Prints a table with the speed-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import obs_as_tensor

    from vlm_policy import VLMPolicy, make_vlm_vec_env

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    env = make_vlm_vec_env(args.env, n_envs=args.n_envs, model=args.model, seed=0, max_new_tokens=args.max_new_tokens)
    policy = PPO(VLMPolicy, env, n_steps=8, policy_kwargs={"model": args.model, "temperature": 1.0},
                 device=args.device).policy
    policy.set_training_mode(False)
    obs = env.reset()

    def step_batched(observation):
        with torch.no_grad():
            tokens, _, _ = policy(obs_as_tensor(observation, policy.device))
        return tokens.cpu().numpy()

    def step_reference(observation):
        rows = []
        tensors = obs_as_tensor(observation, policy.device)
        with torch.no_grad():
            for i in range(args.n_envs):
                single = {key: value[i : i + 1] for key, value in tensors.items()}
                tokens, _, _ = policy(single)
                policy.evaluate_actions(single, tokens.float())  # the second, scoring forward pass
                rows.append(tokens)
        return torch.cat(rows).cpu().numpy()

    step = step_batched if mode == "batched" else step_reference
    obs, _, _, _ = env.step(step(obs))  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        obs, _, _, _ = env.step(step(obs))
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "env_steps_per_s": args.steps * args.n_envs / elapsed, "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="gym_cards/NumberLine-v0")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="rollout steps timed (each is n-envs env steps)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", choices=["batched", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args)))
        return
    results = []
    for mode in ("batched", "reference"):
        command = [sys.executable, __file__, "--mode", mode] + [a for a in sys.argv[1:]]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    batched, reference = results
    print(f"{args.env}, model {args.model}, n_envs={args.n_envs}, max_new_tokens={args.max_new_tokens}, "
          f"{args.steps} timed rollout steps, {args.threads} threads")
    print(f"{'rollout':<34}{'env-steps/s':>12}{'peak RSS MB':>14}")
    for r, label in ((batched, "batched single pass (VLMPolicy)"), (reference, "batch 1 + second forward (ref.)")):
        print(f"{label:<34}{r['env_steps_per_s']:>12.2f}{r['peak_rss_mb']:>14.0f}")
    print(f"speed-up: {batched['env_steps_per_s'] / reference['env_steps_per_s']:.2f}x")


if __name__ == "__main__":
    main()
