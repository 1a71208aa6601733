# Shared launcher, sourced by every run_*.sh: `launch SCRIPT.py [ARGS...]` (SCRIPT relative to the
# repository root; the root scripts import the packages beside them).
# The environment: the active Python if it has torch and accelerate, else the repository's .venv
# (activated here), else one line saying what to run (`launch_env`). This checkout's packages come
# first on PYTHONPATH, whichever environment runs them.
# Environment variables (the reference scripts' names; all optional):
#   GPUS_PER_NODE processes per node (default: the visible CUDA devices, or 1 on CPU)
#   NNODES        number of nodes (default 1); wins over WORLD_SIZE
#   WORLD_SIZE    read as the number of nodes, as the authors' scripts do, only where it cannot be
#                 torch's process count: with GPUS_PER_NODE > 1 a WORLD_SIZE that is a multiple of it
#                 is refused (both readings named; set NNODES), any other value > 1 is read as
#                 nodes with a note (README, "Training on several nodes")
#   NODE_RANK     this node's rank, 0 .. NNODES-1 (default: RANK, else 0; one node: always 0)
#   MASTER_ADDR   (default 127.0.0.1)               MASTER_PORT       (default 1235)
#   PRECISION     accelerate mixed precision: no | bf16 | fp16 (default: no; run_train.sh: bf16)
#   LAUNCH_DRY_RUN=1  print the accelerate command (one line) instead of running it
#   LAUNCH_LOG    file for the launcher's own traceback when the script fails (default: a new
#                 private file $TMPDIR/launch-SCRIPT.XXXXXXXX, mode 0600, removed after a
#                 success); the script's error stays the last line shown
# Every numeric variable is checked to be a plain number before any arithmetic uses it (bash
# evaluates `$(( ))` operands as expressions, so `WORLD_SIZE='a[$(cmd)]'` would run cmd).
# On a machine without CUDA the processes run on CPU with the gloo backend (ACCELERATE_USE_CPU=1;
# `accelerate launch --cpu` would silently start one process; see docs/benchmarks.md).
LAUNCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# launch_number NAME VALUE MIN: succeed when VALUE is a whole number >= MIN (at most 6 digits, no
# leading zero), else print `error: ...` naming NAME and fail. Pure pattern matching: VALUE is
# never evaluated.
launch_number() {
    if [[ "$2" =~ ^(0|[1-9][0-9]{0,5})$ ]] && [ "$2" -ge "$3" ]; then return 0; fi
    echo "error: $1 must be a whole number >= $3 (at most 6 digits), got '$2'" >&2
    return 2
}

# launch_has_env: the current `python` can import torch and accelerate (found, not imported: fast).
launch_has_env() {
    command -v python >/dev/null 2>&1 || return 1
    python -c "import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in ('torch', 'accelerate')) else 1)" \
        >/dev/null 2>&1
}

# launch_pythonpath: this checkout's packages first, whichever environment (and editable install) runs.
launch_pythonpath() {
    export PYTHONPATH="$LAUNCH_ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

# launch_env: make `python` the project's environment (the active one if it has torch and accelerate,
# else $VENV_DIR, default the repository's .venv, activated), or print one `error:` line saying what
# to run and fail.
launch_env() {
    local venv="${VENV_DIR:-.venv}" active setup
    [[ "$venv" = /* ]] || venv="$LAUNCH_ROOT/$venv"
    setup="cd $(printf '%q' "$LAUNCH_ROOT") && bash tools/setup_venv.sh"
    if ! launch_has_env; then
        active=$(command -v python 2>/dev/null || echo "none on PATH")
        if [ ! -f "$venv/bin/activate" ]; then
            echo "error: no Python environment with torch and accelerate (python: $active) and no $venv;" \
                 "run: $setup (for CUDA, install torch for your CUDA first: README, Install)" >&2
            return 1
        fi
        # shellcheck disable=SC1091
        source "$venv/bin/activate"
        if ! launch_has_env; then
            echo "error: $venv has no torch or accelerate; run: $setup (README, Install)" >&2
            return 1
        fi
    fi
    launch_pythonpath
}

# launch_nodes PER_NODE: the number of nodes, from NNODES or else WORLD_SIZE (both already checked to
# be plain numbers). The authors' scripts read WORLD_SIZE as nodes; torch, torchrun and most clusters
# set it to the number of processes. Where both readings are possible the launch is refused.
launch_nodes() {
    local per_node="$1" w="${WORLD_SIZE:-1}"
    if [ -n "${NNODES:-}" ]; then echo "$NNODES"; return 0; fi
    if [ "$w" -eq 1 ] || [ "$per_node" -eq 1 ]; then echo "$w"; return 0; fi   # the readings agree
    if [ $(( w % per_node )) -eq 0 ]; then
        echo "error: WORLD_SIZE=$w is ambiguous with $per_node processes per node: as nodes (the authors'" \
             "scripts) $(( w * per_node )) processes on $w nodes, as processes (torch, torchrun)" \
             "$w processes on $(( w / per_node )) node(s); set NNODES=$w or NNODES=$(( w / per_node ))" \
             "(NNODES wins over WORLD_SIZE)" >&2
        return 2
    fi
    echo "note: WORLD_SIZE=$w read as the number of nodes ($(( w * per_node )) processes): as a process count" \
         "it would not fill nodes of $per_node; NNODES=$w says so without this note" >&2
    echo "$w"
}

launch() {
    local script="$1"; shift
    [[ "$script" = /* ]] || script="$LAUNCH_ROOT/$script"
    launch_env || return 1
    local arg
    for arg in "$@"; do   # --help: the script's own help, without starting processes
        if [ "$arg" = "--help" ] || [ "$arg" = "-h" ]; then python "$script" --help; return $?; fi
    done
    local node_rank="${NODE_RANK:-${RANK:-0}}"
    local master_addr="${MASTER_ADDR:-127.0.0.1}"
    local master_port="${MASTER_PORT:-1235}"
    if [ -n "${NNODES:-}" ]; then launch_number NNODES "$NNODES" 1 || return 2; fi
    launch_number WORLD_SIZE "${WORLD_SIZE:-1}" 1 || return 2
    launch_number "NODE_RANK (or RANK)" "$node_rank" 0 || return 2
    launch_number MASTER_PORT "$master_port" 1 || return 2
    if [ -n "${GPUS_PER_NODE:-}" ]; then launch_number GPUS_PER_NODE "$GPUS_PER_NODE" 1 || return 2; fi
    local ngpu
    ngpu=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
    [[ "$ngpu" =~ ^[0-9]+$ ]] || ngpu=0
    local per_node="${GPUS_PER_NODE:-$(( ngpu > 0 ? ngpu : 1 ))}"
    local nnodes
    nnodes=$(launch_nodes "$per_node") || return 2
    local nproc=$(( per_node * nnodes ))
    if [ "$nnodes" -eq 1 ]; then
        node_rank=0                          # one node: a RANK left by a cluster (a process rank) is moot
    elif [ "$node_rank" -ge "$nnodes" ]; then
        echo "error: NODE_RANK (or RANK)=$node_rank is not a node of $nnodes (0..$(( nnodes - 1 ))): here it is" \
             "this node's rank, not a process rank; set NODE_RANK" >&2
        return 2
    fi
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
    if [ "${LAUNCH_DRY_RUN:-0}" = 1 ]; then   # what would run, one shell-quoted line on stdout
        [ "$ngpu" -eq 0 ] && printf 'ACCELERATE_USE_CPU=1 '
        printf '%q ' "${cmd[@]}" | sed 's/ $//'
        echo
        return 0
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
