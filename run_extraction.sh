#!/usr/bin/env bash
# Latent extraction on every local GPU (or CPU process). All arguments go to extract_features.py:
#   bash run_extraction.sh --data-path /data/imagenet/train \
#       --output-path output/vavae_f16d32/imagenet_train_256 \
#       --tokenizer-config configs/tokenizer/vavae_f16d32.yaml
# SFD's shards (texture + Semantic VAE latents + fp16 DINOv2 REPA targets), SFD's command line:
#   bash run_extraction.sh configs/tokenizer/sdvae_f16d32_semvaebasech16.yaml semvae dinov2_vitb14_reg \
#       --dino-weights /path/dinov2_vitb14_reg4_pretrain.pth [--data-path ...] [--no-repa]
# Re-running the same command resumes an interrupted extraction.
# Process count: GPUS_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (tools/launch.sh).
set -euo pipefail
source "$(dirname "$0")/tools/launch.sh"
launch extract_features.py "$@"
