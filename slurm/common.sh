# shellcheck shell=bash
# Shared body of the sbatch scripts in slurm/ (sourced, not run). A per-family script holds only its
# #SBATCH header, its default config and three lines that find and source this file; see
# slurm/pretrain_hybrid.sh and docs/slurm.md.
#
# gigatron_pretrain_job DEFAULT_CONFIG [ARG...]
#   Runs `srun gigatron pretrain` with the variables below, forwards SIGUSR1/SIGTERM from the batch
#   shell to the srun step, and requeues the job when the trainer exits 75 (saved after SIGUSR1, the
#   preemption warning; or gave up on a hung or lost rank) or a rank died of a signal (SIGKILL,
#   SIGSEGV...). SIGTERM (scancel) makes the trainer save and exit 143: not requeued.
#
#   GIGATRON_CONFIG   run config                                     (default: DEFAULT_CONFIG)
#   GIGATRON_RUN_DIR  output_dir: checkpoints, metrics, resume point (default: runs/$SLURM_JOB_NAME)
#   GIGATRON_DATA     shard dataset directory, or several joined by commas
#                     -> --set data.source=shards --set data.datasets=[{path: ...}, ...]  (default: unset)
#   GIGATRON_VENV     virtual environment holding `gigatron`        (default: <repo>/.venv)
#   GIGATRON_EXTRA    extra `gigatron pretrain` arguments, split on whitespace,
#                     e.g. "--set train.steps=1000 --set parallel.tp=8" (default: empty)
#   GIGATRON_REPO     repository root; found by itself when the job is submitted from it
#   ARG...            arguments after the script name go to `gigatron pretrain` as well
# Relative paths are relative to the repository root, where the job runs.

GIGATRON_EXIT_PREEMPTED=75
GIGATRON_EXIT_INTERRUPTED=130
GIGATRON_EXIT_CANCELLED=143

gigatron_log() {
    echo "[slurm $(date '+%Y-%m-%d %H:%M:%S')] $*"
}

# ---- signals: batch shell -> srun step ------------------------------------------------------------
# `#SBATCH --signal=B:USR1@120` sends SIGUSR1 to this batch shell (only) 120 s before the time limit;
# `scancel --signal=USR1 --batch JOB` does the same by hand. The trap passes it to srun, which passes
# it to every task; the ranks agree on a step, save, and exit 75.

_gigatron_on_signal() {
    GIGATRON_SIGNALLED="$1"
    _gigatron_interrupted=1
    if [[ -n "${GIGATRON_STEP_PID:-}" ]] && kill -0 "$GIGATRON_STEP_PID" 2>/dev/null; then
        gigatron_log "received SIG$1: forwarding it to the training step (srun pid $GIGATRON_STEP_PID) so it saves"
        kill -s "$1" "$GIGATRON_STEP_PID" 2>/dev/null || true
    else
        gigatron_log "received SIG$1 with no training step running"
    fi
}

# gigatron_run_step CMD... : run CMD in the background with the traps installed, wait for it even
# across signals, and leave its exit code in GIGATRON_STEP_STATUS.
gigatron_run_step() {
    GIGATRON_SIGNALLED=""
    GIGATRON_STEP_PID=""
    trap '_gigatron_on_signal USR1' USR1
    trap '_gigatron_on_signal TERM' TERM
    "$@" &
    GIGATRON_STEP_PID=$!
    local status
    while :; do
        _gigatron_interrupted=0
        status=0
        wait "$GIGATRON_STEP_PID" || status=$?
        # `wait` returns >128 as soon as a trapped signal arrives; the step is still running (or its
        # status is still kept by the shell), so wait again for its real exit code.
        if ((_gigatron_interrupted && status > 128)); then
            continue
        fi
        break
    done
    trap - USR1 TERM
    GIGATRON_STEP_STATUS=$status
}

# gigatron_died_of STATUS : the signal name when STATUS says a rank died of a signal that is a fault
# (SIGKILL from the OOM killer or a lost node, SIGSEGV, SIGBUS, SIGABRT...), not a request to stop.
gigatron_died_of() {
    local status="$1"
    ((status > 128 && status != GIGATRON_EXIT_INTERRUPTED && status != GIGATRON_EXIT_CANCELLED)) || return 1
    kill -l "$((status - 128))" 2>/dev/null
}

# gigatron_finish STATUS : requeue on 75 (preempted, hung, or lost a rank) and when a rank died of a
# signal (srun --kill-on-bad-exit then ends the others and reports 128 + the signal), otherwise exit
# with STATUS.
gigatron_finish() {
    local status="$1" signal_name
    if signal_name="$(gigatron_died_of "$status")"; then
        gigatron_log "a rank died of SIG$signal_name (srun exit $status; srun's lines above name the task): the run resumes from its last checkpoint"
        status=$GIGATRON_EXIT_PREEMPTED
    fi
    if ((status == GIGATRON_EXIT_PREEMPTED)); then
        if [[ -z "${SLURM_JOB_ID:-}" ]]; then
            gigatron_log "trainer exited $status (requeue); not under SLURM, nothing to requeue"
            exit "$status"
        fi
        gigatron_log "trainer exited $status (preempted, hung or lost a rank${GIGATRON_SIGNALLED:+; SIG$GIGATRON_SIGNALLED received}): requeueing job $SLURM_JOB_ID"
        if scontrol requeue "$SLURM_JOB_ID"; then
            gigatron_log "requeued; the next start resumes from the latest checkpoint"
            exit 0
        fi
        gigatron_log "scontrol requeue $SLURM_JOB_ID failed (cancelled job, or requeue not allowed); resubmit to resume"
        exit "$status"
    fi
    if ((status == 0)); then
        gigatron_log "trainer finished (exit 0)"
    elif ((status == GIGATRON_EXIT_CANCELLED || status == GIGATRON_EXIT_INTERRUPTED)); then
        # SIGTERM is cancellation (scancel), not preemption: SLURM requeues the job itself when the
        # requeue was its own decision (scontrol requeue, PreemptMode=REQUEUE).
        gigatron_log "trainer saved and stopped (exit $status${GIGATRON_SIGNALLED:+ after SIG$GIGATRON_SIGNALLED}): cancelled, not requeueing"
    else
        gigatron_log "trainer failed with exit code $status${GIGATRON_SIGNALLED:+ after SIG$GIGATRON_SIGNALLED}; not requeueing"
    fi
    exit "$status"
}

# ---- the job --------------------------------------------------------------------------------------
gigatron_pretrain_job() {
    local default_config="$1"
    shift
    local repo="${GIGATRON_REPO:?GIGATRON_REPO must be set before sourcing slurm/common.sh}"
    cd "$repo" || exit 2

    local config="${GIGATRON_CONFIG:-$default_config}"
    local run_dir="${GIGATRON_RUN_DIR:-runs/${SLURM_JOB_NAME:-gigatron}}"
    local venv="${GIGATRON_VENV:-$repo/.venv}"
    local gigatron="$venv/bin/gigatron"

    gigatron_log "job ${SLURM_JOB_ID:-none} (${SLURM_JOB_NAME:-}) SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}" \
        "nodes=${SLURM_JOB_NODELIST:-$(hostname)} tasks=${SLURM_NTASKS:-1} cpus/task=${SLURM_CPUS_PER_TASK:-?}" \
        "gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}}/node"
    if [[ ! -f "$config" ]]; then
        gigatron_log "GIGATRON_CONFIG=$config: no such file (relative paths start at $repo)"
        exit 2
    fi
    if [[ ! -x "$gigatron" ]]; then
        gigatron_log "$gigatron not found: set GIGATRON_VENV to the environment where gigatron is installed"
        exit 2
    fi
    mkdir -p "$run_dir"

    local -a args=(pretrain --config "$config" --set "output_dir=$run_dir")
    if [[ -n "${GIGATRON_DATA:-}" ]]; then
        local specs="" path
        local -a paths
        IFS=',' read -r -a paths <<<"$GIGATRON_DATA"
        for path in "${paths[@]}"; do
            if [[ -n "$path" ]]; then specs+="${specs:+, }{path: \"$path\"}"; fi
        done
        args+=(--set data.source=shards --set "data.datasets=[$specs]")
    fi
    if [[ -n "${GIGATRON_EXTRA:-}" ]]; then
        local -a extra
        read -r -a extra <<<"$GIGATRON_EXTRA"
        args+=("${extra[@]}")
    fi
    args+=("$@")

    # One thread pool per rank sized to its CPUs, unless the user chose.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
    gigatron_log "config=$config run_dir=$run_dir venv=$venv"
    # In the background, so that this shell's traps run while the step trains. Outside SLURM (bash
    # slurm/pretrain_hybrid.sh on a workstation) the trainer runs as a single process.
    # --cpus-per-task explicitly: srun of Slurm >= 22.11 no longer inherits it from sbatch.
    local -a launcher=(srun --kill-on-bad-exit=1)
    [[ -z "${SLURM_CPUS_PER_TASK:-}" ]] || launcher+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
    [[ -n "${SLURM_JOB_ID:-}" ]] || launcher=()
    gigatron_log "${launcher[*]} $gigatron ${args[*]}"
    gigatron_run_step "${launcher[@]}" "$gigatron" "${args[@]}"
    gigatron_finish "$GIGATRON_STEP_STATUS"
}
