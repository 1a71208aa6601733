#!/usr/bin/env bash
# Reconstruction metrics (rFID, PSNR, SSIM, LPIPS) of a tokenizer over an ImageFolder, on every
# local GPU (or CPU). All arguments go to tools/evaluate_tokenizer.py, e.g.
#   bash run_tokenizer_eval.sh --config configs/tokenizer/vavae_f16d32.yaml \
#       --data-path /data/imagenet/val --inception-weights pt_inception-2015-12-05-6726825d.pth \
#       --lpips-vgg-weights vgg16-397923af.pth
# Process count and precision: GPUS_PER_NODE, NNODES, ... as documented in tools/launch.sh.
set -euo pipefail
source "$(dirname "$0")/tools/launch.sh"
launch "tools/evaluate_tokenizer.py" "$@"
