#!/usr/bin/env bash
# One of the paper's gym_cards runs on a GPU, from a real checkpoint (e.g. a local LLaVA-1.6-Mistral-7B
# directory). Called by train_<task>_gpu.sh; usage: bash examples/paper_gpu_run.sh TASK STEPS_PER_UPDATE CHECKPOINT
# Every setting and where it comes from (the paper, RL4VLM's VLM_PPO/scripts/run_*.sh and main.py, or
# ours, with the reason) is tabled in docs/paper_settings.md.
set -euo pipefail
TASK=${1:?task, e.g. NumberLine}
STEPS_PER_UPDATE=${2:?env steps per PPO update}
CHECKPOINT=${3:?usage: $0 TASK STEPS_PER_UPDATE /path/to/checkpoint}
vlm-cards train --env "gym_cards/${TASK}-v0" --model "$CHECKPOINT" --out-dir "runs/${TASK,,}-gpu" \
  --demos 2000 --sft-steps 500 --sft-learning-rate 2e-5 --sft-batch-size 8 --sft-lora-r 64 \
  --vision-warmup-steps 0 --dtype bfloat16 --gradient-checkpointing on --micro-batch-size 4 \
  --ppo-timesteps 15000 --n-envs 8 --n-steps $((STEPS_PER_UPDATE / 8)) --batch-size 128 --n-epochs 4 \
  --learning-rate 1e-5 --learning-rate-end 1e-9 --clip-range 0.1 --target-kl 0 --gamma 0.9 --gae-lambda 0.95 \
  --max-grad-norm 0.01 --temperature 0.2 --cot-weight 0.5 --max-new-tokens 256 --lora-r 128 \
  --train-vision --value-lr-scale 1 --value-gradients-to-model --kl-coef 0 \
  --sft-stop-reach 0 --ppo-check-every 0 --keep-checkpoints 3 --eval-episodes 200 --device cuda
