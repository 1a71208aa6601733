#!/usr/bin/env bash
# ADM (guided-diffusion) evaluation of a sample batch against a reference batch, in PyTorch:
# prints Inception Score, FID, sFID, Precision, Recall and writes SAMPLE_adm_eval.json.
# Usage: run_fid_eval.sh REF.npz SAMPLE.npz [--device cuda] [--inception-weights PATH] [...]
# Weights: --inception-weights or $ADM_INCEPTION_WEIGHTS (pt_inception-2015-12-05-6726825d.pth).
# Python: $PYTHON if set, else the project's environment (tools/launch.sh: launch_env).
set -euo pipefail
source "$(dirname "$0")/tools/launch.sh"
if [ -n "${PYTHON:-}" ]; then launch_pythonpath; else launch_env || exit 1; fi
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    sed -n '2,/^set -/{/^#/s/^# \{0,1\}//p}' "$0"; echo
    exec "${PYTHON:-python}" "$LAUNCH_ROOT/tools/adm_evaluator.py" --help
fi
if [ "$#" -lt 2 ]; then
    echo "usage: $0 REF.npz SAMPLE.npz [extra tools/adm_evaluator.py args]" >&2
    exit 2
fi
exec "${PYTHON:-python}" "$LAUNCH_ROOT/tools/adm_evaluator.py" "$@"
