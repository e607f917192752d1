#!/usr/bin/env bash
# The paper's NumberLine run on a GPU. Usage: bash examples/train_numberline_gpu.sh /path/to/checkpoint
exec bash "$(dirname "$0")/paper_gpu_run.sh" NumberLine 512 "${1:?usage: $0 /path/to/checkpoint}"
