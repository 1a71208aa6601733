#!/usr/bin/env bash
# Train LightningDiT:  bash run_train.sh CONFIG [key=value ...]
# e.g. bash run_train.sh configs/lightningdit_xl_vavae_f16d32.yaml data.data_path=/data/latents
# Re-run with train.resume=true to continue from the newest checkpoint (exact resume).
# Processes: GPUS_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (tools/launch.sh);
# PRECISION defaults to bf16 here (bf16 autocast, fp32 weights), as the reference.
set -euo pipefail
source "$(dirname "$0")/tools/launch.sh"
PRECISION="${PRECISION:-bf16}" launch "train.py" "$@"
