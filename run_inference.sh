#!/usr/bin/env bash
# FID sampling (PNGs + ADM .npz):  bash run_inference.sh CONFIG [key=value ...] [--fid]
# Re-running the same command resumes an interrupted run. Sampling precision is
# sample.precision (fp32 by default, as the reference); PRECISION is not used by inference.py.
# Processes: GPUS_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (tools/launch.sh).
#
# SFD's variables (its README's commands run unchanged; docs/sfd.md), each one key=value placed
# right after CONFIG, so key=value arguments on the command line win:
#   CFG_SCALE, CFG_INTERVAL_START, TIMESTEP_SHIFT, CFG_SCALE_SEM, CFG_SCALE_TEX, FID_NUM,
#   NUM_SAMPLING_STEPS           -> sample.cfg_scale, ... (the same names, lower case)
#   AUTOGUIDANCE_MODEL_SIZE=b    -> sample.autoguidance_config=configs/sfd/autoguidance_b/inference.yaml
#   AUTOGUIDANCE_CKPT_ITER=K     -> sample.autoguidance_ckpt_iter=K (the guide's {K*1000:07d}.pt)
# SFD applies the two AUTOGUIDANCE_* only together (one alone is ignored there); here each applies.
set -euo pipefail
source "$(dirname "$0")/tools/launch.sh"

sfd=()
for name in CFG_SCALE CFG_INTERVAL_START TIMESTEP_SHIFT CFG_SCALE_SEM CFG_SCALE_TEX FID_NUM NUM_SAMPLING_STEPS; do
    if [ -n "${!name:-}" ]; then sfd+=("sample.${name,,}=${!name}"); fi
done
case "${AUTOGUIDANCE_MODEL_SIZE:-}" in
    "") ;;
    b) sfd+=("sample.autoguidance_config=configs/sfd/autoguidance_b/inference.yaml") ;;
    *) echo "error: AUTOGUIDANCE_MODEL_SIZE=${AUTOGUIDANCE_MODEL_SIZE}: SFD has one guide size, 'b'" \
            "(configs/sfd/autoguidance_b/inference.yaml)" >&2; exit 2 ;;
esac
if [ -n "${AUTOGUIDANCE_CKPT_ITER:-}" ]; then sfd+=("sample.autoguidance_ckpt_iter=${AUTOGUIDANCE_CKPT_ITER}"); fi

if [ "${#sfd[@]}" -eq 0 ]; then
    launch "inference.py" "$@"
elif [ "${1:-}" = "--config" ] && [ "$#" -ge 2 ]; then
    echo "SFD variables: ${sfd[*]}" >&2
    launch "inference.py" "$1" "$2" "${sfd[@]}" "${@:3}"
elif [ "$#" -ge 1 ] && [[ "$1" != -* ]]; then
    echo "SFD variables: ${sfd[*]}" >&2
    launch "inference.py" "$1" "${sfd[@]}" "${@:2}"
else
    launch "inference.py" "$@" "${sfd[@]}"
fi
