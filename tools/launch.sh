# Shared launcher, sourced by every run_*.sh: `launch SCRIPT.py [ARGS...]` (SCRIPT relative to the
# repository root; the root scripts import the packages beside them).
# Environment (same names as the reference scripts; all optional):
#   GPUS_PER_NODE (default: number of visible CUDA devices, or 1 on CPU)
#   WORLD_SIZE    number of nodes (default 1)      RANK / NODE_RANK  this node's rank (default 0)
#   MASTER_ADDR   (default 127.0.0.1)               MASTER_PORT       (default 1235)
#   PRECISION     accelerate mixed precision: no | bf16 | fp16 (default: no; run_train.sh: bf16)
#   LAUNCH_LOG    file for the launcher's own traceback when the script fails (default: a new
#                 private file $TMPDIR/launch-SCRIPT.XXXXXXXX, mode 0600, removed after a
#                 success); the script's error stays the last line shown
# Every numeric variable is checked to be a plain number before any arithmetic uses it (bash
# evaluates `$(( ))` operands as expressions, so `WORLD_SIZE='a[$(cmd)]'` would run cmd).
# On a machine without CUDA the processes run on CPU with the gloo backend (ACCELERATE_USE_CPU=1;
# `accelerate launch --cpu` would silently start one process; see the README's hardware notes).
LAUNCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# launch_number NAME VALUE MIN: succeed when VALUE is a whole number >= MIN (at most 6 digits, no
# leading zero), else print `error: ...` naming NAME and fail. Pure pattern matching: VALUE is
# never evaluated.
launch_number() {
    if [[ "$2" =~ ^(0|[1-9][0-9]{0,5})$ ]] && [ "$2" -ge "$3" ]; then return 0; fi
    echo "error: $1 must be a whole number >= $3 (at most 6 digits), got '$2'" >&2
    return 2
}

launch() {
    local script="$1"; shift
    [[ "$script" = /* ]] || script="$LAUNCH_ROOT/$script"
    local arg
    for arg in "$@"; do   # --help: the script's own help, without starting processes
        if [ "$arg" = "--help" ] || [ "$arg" = "-h" ]; then python "$script" --help; return $?; fi
    done
    local nnodes="${WORLD_SIZE:-1}"
    local node_rank="${NODE_RANK:-${RANK:-0}}"
    local master_addr="${MASTER_ADDR:-127.0.0.1}"
    local master_port="${MASTER_PORT:-1235}"
    launch_number WORLD_SIZE "$nnodes" 1 || return 2
    launch_number "NODE_RANK (or RANK)" "$node_rank" 0 || return 2
    launch_number MASTER_PORT "$master_port" 1 || return 2
    if [ -n "${GPUS_PER_NODE:-}" ]; then launch_number GPUS_PER_NODE "$GPUS_PER_NODE" 1 || return 2; fi
    local ngpu
    ngpu=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
    [[ "$ngpu" =~ ^[0-9]+$ ]] || ngpu=0
    local per_node="${GPUS_PER_NODE:-$(( ngpu > 0 ? ngpu : 1 ))}"
    local nproc=$(( per_node * nnodes ))
    local mp_args=(--mixed_precision "${PRECISION:-no}")
    if [ "$ngpu" -eq 0 ]; then export ACCELERATE_USE_CPU=1; fi
    local cmd
    if [ "$nproc" -gt 1 ]; then
        cmd=(accelerate launch --multi_gpu --num_processes "$nproc" --num_machines "$nnodes"
             --machine_rank "$node_rank" --main_process_ip "$master_addr"
             --main_process_port "$master_port" --dynamo_backend no "${mp_args[@]}" "$script" "$@")
    else
        cmd=(accelerate launch --num_processes 1 --num_machines 1 --dynamo_backend no
             "${mp_args[@]}" "$script" "$@")
    fi
    # stderr passes through tools/launch_errors.py: the launcher's own traceback / torch-elastic
    # report after a failure goes to $LAUNCH_LOG only, each rank's identical error is shown once,
    # and the launch returns the script's own exit status (its error stays the last line).
    local log="${LAUNCH_LOG:-}" held
    if [ -z "$log" ]; then   # unpredictable name, created 0600 by mktemp: no one else can read or plant it
        log=$(mktemp "${TMPDIR:-/tmp}/launch-$(basename "$script" .py).XXXXXXXX") || return 1
    fi
    # What the filter held back after the script's last words: the launcher's report of a failure,
    # shown only if the launcher says the run succeeded after all.
    held=$(mktemp "${TMPDIR:-/tmp}/launch-held.XXXXXXXX") || return 1
    local restore_e=0 codes
    [[ $- == *e* ]] && restore_e=1
    set +e
    exec 3>&1
    "${cmd[@]}" 2>&1 1>&3 3>&- | python "$LAUNCH_ROOT/tools/launch_errors.py" "$log" "$held" >&2 3>&-
    codes=("${PIPESTATUS[@]}")
    exec 3>&-
    [ "$restore_e" = 1 ] && set -e
    if [ "${codes[0]}" -eq 0 ]; then cat "$held" >&2; fi
    rm -f "$held"
    if [ "${codes[0]}" -eq 0 ]; then rm -f "$log"; return 0; fi
    if [ "${codes[1]}" -ne 0 ]; then return "${codes[1]}"; fi
    return "${codes[0]}"
}
