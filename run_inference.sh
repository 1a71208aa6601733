#!/usr/bin/env bash
# FID sampling (PNGs + ADM .npz):  bash run_inference.sh CONFIG [key=value ...] [--fid]
# Re-running the same command resumes an interrupted run. Sampling precision is
# sample.precision (fp32 by default, as the reference); PRECISION is not used by inference.py.
# Processes: GPUS_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (tools/launch.sh).
set -euo pipefail
source "$(dirname "$0")/tools/launch.sh"
launch "inference.py" "$@"
