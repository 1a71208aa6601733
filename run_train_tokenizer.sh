#!/usr/bin/env bash
# Train the VA-VAE tokenizer: bash run_train_tokenizer.sh CONFIG.yaml [key=value ...]
# Multi-GPU / multi-node through tools/launch.sh (GPUS_PER_NODE, NNODES, NODE_RANK,
# MASTER_ADDR, MASTER_PORT). The config is the first argument (the reference read $CONFIG_PATH).
set -euo pipefail
source "$(dirname "$0")/tools/launch.sh"
launch train_tokenizer.py "$@"
