#!/usr/bin/env bash
# Tokenize a dataset with a SLURM job array, then merge it: run this script with bash (not sbatch)
# on a login node. It submits itself twice:
#   1. an array job of N tasks; task i runs `gigatron data shard` on input files i, i+N, ... (it
#      reads its index from SLURM_ARRAY_TASK_ID), with --workers = the task's CPUs;
#   2. a merge job, `gigatron data merge OUT`, that starts only if every array task succeeded
#      (--dependency=afterok). A failed task leaves the merge pending for good: the script prints
#      how to rerun one task (`sbatch slurm/shard.sh --task-index I --num-tasks N ...`) and the merge
#      (`sbatch slurm/shard.sh --merge OUT`).
# The first argument picks the mode: --tasks submits, --merge merges, anything else is one task.
#
#   bash slurm/shard.sh --tasks 64 [SBATCH_OPTION...] -- \
#       --input 'corpus/*.jsonl' --tokenizer tok.model --seq-len 4096 --out s3://bucket/corpus-4k
#
# SBATCH_OPTIONs (e.g. --partition=cpu --time=2:00:00) go to both jobs; the header below holds the
# defaults. The dataset is the same for every N (docs/data.md, "Array builds"). A task that is
# requeued (or rerun) keeps the input files it already finished.
#SBATCH --job-name=gigatron-shard
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

for _dir in "${GIGATRON_REPO:-}" "$(dirname "${BASH_SOURCE[0]}")/.." "${SLURM_SUBMIT_DIR:-}"; do
    if [[ -n "$_dir" && -f "$_dir/slurm/common.sh" ]]; then GIGATRON_REPO="$(cd "$_dir" && pwd)"; break; fi
done
[[ -f "${GIGATRON_REPO:-}/slurm/common.sh" ]] || { echo "set GIGATRON_REPO to the gigatron checkout" >&2; exit 2; }
source "$GIGATRON_REPO/slurm/common.sh"
GIGATRON_BIN="${GIGATRON_VENV:-$GIGATRON_REPO/.venv}/bin/gigatron"

if [[ "${1:-}" == "--merge" ]]; then  # the dependent job
    gigatron_log "merging $2"
    exec "$GIGATRON_BIN" data merge "$2"
fi
if [[ "${1:-}" != "--tasks" && "${1:-}" != --tasks=* ]]; then  # one task; --workers first, so the user's wins
    gigatron_log "shard task ${SLURM_ARRAY_TASK_ID:-(from --task-index)} of ${SLURM_ARRAY_TASK_COUNT:-?}"
    exec "$GIGATRON_BIN" data shard --workers "${SLURM_CPUS_PER_TASK:-1}" "$@"
fi

# ---- submission (outside SLURM) -------------------------------------------------------------------
usage="usage: bash slurm/shard.sh --tasks N [SBATCH_OPTION...] -- <gigatron data shard arguments, with --out>"
tasks="" out=""
sbatch_options=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
    case "$1" in
        --tasks) tasks="${2:?$usage}"; shift 2 ;;
        --tasks=*) tasks="${1#--tasks=}"; shift ;;
        *) sbatch_options+=("$1"); shift ;;
    esac
done
[[ "${1:-}" == "--" ]] || { echo "$usage" >&2; exit 2; }
shift
[[ "$tasks" =~ ^[1-9][0-9]*$ ]] || { echo "--tasks must be a positive integer (got '$tasks'); $usage" >&2; exit 2; }
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --out) out="${args[i + 1]:-}" ;;
        --out=*) out="${args[i]#--out=}" ;;
        --task-index* | --num-tasks*) echo "slurm/shard.sh numbers the tasks itself; drop ${args[i]}" >&2; exit 2 ;;
    esac
done
[[ -n "$out" ]] || { echo "the shard arguments need --out; $usage" >&2; exit 2; }
cd "$GIGATRON_REPO"
mkdir -p logs
array=$(sbatch --parsable --array="0-$((tasks - 1))" "${sbatch_options[@]}" "$GIGATRON_REPO/slurm/shard.sh" "$@")
array="${array%%;*}"
merge=$(sbatch --parsable --dependency="afterok:$array" --job-name=gigatron-shard-merge --cpus-per-task=1 \
    "${sbatch_options[@]}" "$GIGATRON_REPO/slurm/shard.sh" --merge "$out")
merge="${merge%%;*}"
echo "array job $array ($tasks tasks) and merge job $merge (runs after every task succeeded)"
echo "if task I fails: scancel $merge; fix the cause; then"
echo "  rerun=\$(sbatch --parsable ${sbatch_options[*]} slurm/shard.sh --task-index I --num-tasks $tasks $*)"
echo "  sbatch --dependency=afterok:\$rerun slurm/shard.sh --merge $out"
echo "$array $merge"
