#!/usr/bin/env bash
# Latent extraction on every local GPU (or CPU process). All arguments go to extract_features.py:
#   bash run_extraction.sh --data-path /data/imagenet/train \
#       --output-path output/vavae_f16d32/imagenet_train_256 \
#       --tokenizer-config configs/tokenizer/vavae_f16d32.yaml
# Re-running the same command resumes an interrupted extraction.
# Process count: GPUS_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (tools/launch.sh).
set -euo pipefail
source "$(dirname "$0")/tools/launch.sh"
launch extract_features.py "$@"
