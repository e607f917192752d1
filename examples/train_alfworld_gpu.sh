#!/usr/bin/env bash
# The paper's ALFWorld run on a GPU, from a real checkpoint (e.g. a local LLaVA-1.6-Mistral-7B directory).
# Usage: bash examples/train_alfworld_gpu.sh /path/to/checkpoint /path/to/alfworld_data [TRAIN_SPLIT]
# The data folder is what `alfworld-download` fills (json_2.1.1/<split>/...). The settings follow RL4VLM's
# VLM_PPO_ALF/scripts/run_alf.sh; where ours differ, docs/paper_settings.md (ALFWorld) says why.
# Frames: this bridge draws the `text` view, not THOR's first-person frames, so scores are not
# comparable with the paper's 21.7% (THOR frames and a 7B model).
set -euo pipefail
CHECKPOINT=${1:?usage: $0 /path/to/checkpoint /path/to/alfworld_data [train split]}
DATA=${2:?usage: $0 /path/to/checkpoint /path/to/alfworld_data [train split]}
SPLIT=${3:-train}
vlm-cards train --env alfworld/ALFWorld-v0 --data-root "$DATA" --split "$SPLIT" --model "$CHECKPOINT" \
  --out-dir runs/alfworld-gpu --eval-splits valid_seen valid_unseen --eval-episodes 200 \
  --demos 4000 --sft-steps 1000 --sft-learning-rate 2e-5 --sft-batch-size 8 --sft-lora-r 64 \
  --vision-warmup-steps 0 --dtype bfloat16 --gradient-checkpointing on --micro-batch-size 2 \
  --ppo-timesteps 12288 --n-envs 8 --n-steps 128 --batch-size 256 --n-epochs 4 \
  --learning-rate 1e-5 --learning-rate-end 1e-9 --clip-range 0.1 --target-kl 0 --gamma 0.9 --gae-lambda 0.95 \
  --max-grad-norm 0.01 --temperature 0.2 --cot-weight 0.2 --max-new-tokens 256 --lora-r 128 \
  --train-vision --value-lr-scale 1 --value-gradients-to-model --kl-coef 0 \
  --sft-stop-reach 0 --keep-checkpoints 3 --device cuda
