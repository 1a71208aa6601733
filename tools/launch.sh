# Shared launcher, sourced by every run_*.sh: `launch SCRIPT.py [ARGS...]` (SCRIPT relative to the
# repository root; the root scripts import the packages beside them).
# Environment (same names as the reference scripts; all optional):
#   GPUS_PER_NODE (default: number of visible CUDA devices, or 1 on CPU)
#   WORLD_SIZE    number of nodes (default 1)      RANK / NODE_RANK  this node's rank (default 0)
#   MASTER_ADDR   (default 127.0.0.1)               MASTER_PORT       (default 1235)
#   PRECISION     accelerate mixed precision: no | bf16 | fp16 (default: no; run_train.sh: bf16)
# On a machine without CUDA the processes run on CPU with the gloo backend (ACCELERATE_USE_CPU=1;
# `accelerate launch --cpu` would silently start one process, see ENV.md).
LAUNCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

launch() {
    local script="$1"; shift
    [[ "$script" = /* ]] || script="$LAUNCH_ROOT/$script"
    local nnodes="${WORLD_SIZE:-1}"
    local node_rank="${NODE_RANK:-${RANK:-0}}"
    local master_addr="${MASTER_ADDR:-127.0.0.1}"
    local master_port="${MASTER_PORT:-1235}"
    local ngpu
    ngpu=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
    local per_node="${GPUS_PER_NODE:-$(( ngpu > 0 ? ngpu : 1 ))}"
    local nproc=$(( per_node * nnodes ))
    local mp_args=(--mixed_precision "${PRECISION:-no}")
    if [ "$ngpu" -eq 0 ]; then export ACCELERATE_USE_CPU=1; fi
    if [ "$nproc" -gt 1 ]; then
        accelerate launch --multi_gpu --num_processes "$nproc" --num_machines "$nnodes" \
            --machine_rank "$node_rank" --main_process_ip "$master_addr" \
            --main_process_port "$master_port" --dynamo_backend no "${mp_args[@]}" \
            "$script" "$@"
    else
        accelerate launch --num_processes 1 --num_machines 1 --dynamo_backend no \
            "${mp_args[@]}" "$script" "$@"
    fi
}
