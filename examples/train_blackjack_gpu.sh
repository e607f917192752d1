#!/usr/bin/env bash
# The paper's Blackjack run on a GPU. Usage: bash examples/train_blackjack_gpu.sh /path/to/checkpoint
exec bash "$(dirname "$0")/paper_gpu_run.sh" Blackjack 512 "${1:?usage: $0 /path/to/checkpoint}"
