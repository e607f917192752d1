#!/usr/bin/env bash
# The paper's Points24 run on a GPU. Usage: bash examples/train_points24_gpu.sh /path/to/checkpoint
exec bash "$(dirname "$0")/paper_gpu_run.sh" Points24 1024 "${1:?usage: $0 /path/to/checkpoint}"
