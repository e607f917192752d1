#!/usr/bin/env bash
# The paper's EZPoints run on a GPU. Usage: bash examples/train_ezpoints_gpu.sh /path/to/checkpoint
exec bash "$(dirname "$0")/paper_gpu_run.sh" EZPoints 1024 "${1:?usage: $0 /path/to/checkpoint}"
