#!/usr/bin/env bash
# The paper's Points24 run on a GPU, from a real checkpoint (e.g. a local LLaVA-1.6-Mistral-7B directory).
# Usage: bash examples/train_points24_gpu.sh /path/to/checkpoint
# Settings from the paper's scripts: 15k env steps, 4 PPO epochs, clip 0.1, gamma 0.9, GAE 0.95,
# max grad norm 0.01, lr 1e-5 -> 1e-9 cosine, temperature 0.2, lambda 0.5, 256 new tokens, LoRA r=128.
set -euo pipefail
CHECKPOINT=${1:?usage: $0 /path/to/checkpoint}
vlm-cards train --env gym_cards/Points24-v0 --model "$CHECKPOINT" --out-dir runs/points24-gpu \
  --demos 2000 --sft-steps 500 --sft-learning-rate 2e-5 --sft-batch-size 8 --sft-lora-r 64 --vision-warmup-steps 0 \
  --ppo-timesteps 15000 --n-envs 8 --n-steps 128 --batch-size 32 --n-epochs 4 \
  --learning-rate 1e-5 --learning-rate-end 1e-9 --clip-range 0.1 --gamma 0.9 --gae-lambda 0.95 \
  --max-grad-norm 0.01 --temperature 0.2 --cot-weight 0.5 --max-new-tokens 256 --lora-r 128 --no-train-vision \
  --eval-episodes 200 --device cuda
