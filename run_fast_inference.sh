#!/usr/bin/env bash
# Demo grid, as the reference run_fast_inference.sh: one process, classes
# [975, 3, 207, 387, 388, 88, 979, 279], cfg 9.0, no interval, no shift (the overrides are logged)
# -> demo_images/demo_samples.png.   bash run_fast_inference.sh CONFIG [key=value ...] [--demo-out PNG]
# An SFD config (model.semantic_chans > 0) draws SFD's demo instead: classes
# [106, 22, 279, 975, 388, 15, 36, 979], w 1.5 on both parts, no interval, no shift, with the
# guide of sample.autoguidance_config when the YAML sets sample.autoguidance (else CFG). As SFD's
# run_fast_inference.sh, it reads none of run_inference.sh's CFG_SCALE / AUTOGUIDANCE_* variables.
set -euo pipefail
source "$(dirname "$0")/tools/launch.sh"
GPUS_PER_NODE=1 NNODES=1 NODE_RANK=0 launch "inference.py" "$@" --demo
