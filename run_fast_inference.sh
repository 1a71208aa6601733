#!/usr/bin/env bash
# Demo grid, as the reference run_fast_inference.sh: one process, classes
# [975, 3, 207, 387, 388, 88, 979, 279], cfg 9.0, no interval, no shift (the overrides are logged)
# -> demo_images/demo_samples.png.   bash run_fast_inference.sh CONFIG [key=value ...] [--demo-out PNG]
set -euo pipefail
source "$(dirname "$0")/tools/launch.sh"
GPUS_PER_NODE=1 NNODES=1 NODE_RANK=0 launch "inference.py" "$@" --demo
