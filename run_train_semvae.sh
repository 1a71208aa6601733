#!/usr/bin/env bash
# Train SFD's Semantic VAE: bash run_train_semvae.sh CONFIG.yaml [key=value ...]
# e.g. bash run_train_semvae.sh configs/tokenizer/semvae_train/ch16.yaml
# Multi-GPU / multi-node through tools/launch.sh (GPUS_PER_NODE, NNODES, NODE_RANK,
# MASTER_ADDR, MASTER_PORT). The precision is the YAML's training.mixed_precision (ch16: bf16),
# not PRECISION. data.batch_size is per process, as in SFD.
set -euo pipefail
source "$(dirname "$0")/tools/launch.sh"
launch train_semvae.py "$@"
