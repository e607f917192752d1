#!/usr/bin/env bash
# One of the paper's gym_cards runs on a GPU, from a real checkpoint (e.g. a local LLaVA-1.6-Mistral-7B
# directory). Called by train_<task>_gpu.sh; usage: bash examples/paper_gpu_run.sh TASK STEPS_PER_UPDATE CHECKPOINT
# Settings from the paper's scripts: 15k env steps, 4 PPO epochs, clip 0.1, gamma 0.9, GAE 0.95,
# max grad norm 0.01, lr 1e-5 -> 1e-9 cosine, temperature 0.2, lambda 0.5, 256 new tokens, LoRA r=128,
# no KL penalty (the main job's tiny-model default uses one; the paper did not);
# 8 envs x STEPS_PER_UPDATE/8 steps = 512 (NumberLine, Blackjack) or 1024 (EZPoints, Points24) per update.
set -euo pipefail
TASK=${1:?task, e.g. NumberLine}
STEPS_PER_UPDATE=${2:?env steps per PPO update}
CHECKPOINT=${3:?usage: $0 TASK STEPS_PER_UPDATE /path/to/checkpoint}
vlm-cards train --env "gym_cards/${TASK}-v0" --model "$CHECKPOINT" --out-dir "runs/${TASK,,}-gpu" \
  --demos 2000 --sft-steps 500 --sft-learning-rate 2e-5 --sft-batch-size 8 --sft-lora-r 64 --vision-warmup-steps 0 \
  --ppo-timesteps 15000 --n-envs 8 --n-steps $((STEPS_PER_UPDATE / 8)) --batch-size 32 --n-epochs 4 \
  --learning-rate 1e-5 --learning-rate-end 1e-9 --clip-range 0.1 --gamma 0.9 --gae-lambda 0.95 \
  --max-grad-norm 0.01 --temperature 0.2 --cot-weight 0.5 --max-new-tokens 256 --lora-r 128 --no-train-vision \
  --value-gradients-to-model --kl-coef 0 --keep-checkpoints 3 --eval-episodes 200 --device cuda
