#!/usr/bin/env bash
# One task of a sweep made by `gigatron sweep plan`: array task i trains the i-th grid point into
# <sweep>/task-NNN, with the same preemption, requeue and auto-resume as every gigatron job.
#
#   .venv/bin/gigatron sweep plan --config configs/hybrid/smoke.yaml \
#       --grid model.hidden_size=64,128 --grid train.steps=100,200 --out sweeps/demo
#   mkdir -p logs && sbatch --array=0-3 slurm/sweep.sh sweeps/demo
#   .venv/bin/gigatron sweep summary sweeps/demo
#
# Resources per task as in the per-family scripts; override on the sbatch command line.
#SBATCH --job-name=gigatron-sweep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

for _dir in "${GIGATRON_REPO:-}" "$(dirname "${BASH_SOURCE[0]}")/.." "${SLURM_SUBMIT_DIR:-}"; do
    if [[ -n "$_dir" && -f "$_dir/slurm/common.sh" ]]; then GIGATRON_REPO="$(cd "$_dir" && pwd)"; break; fi
done
[[ -f "${GIGATRON_REPO:-}/slurm/common.sh" ]] || { echo "set GIGATRON_REPO to the gigatron checkout" >&2; exit 2; }
source "$GIGATRON_REPO/slurm/common.sh"

SWEEP_DIR="${1:?usage: sbatch --array=0-N slurm/sweep.sh SWEEP_DIR}"
shift
: "${SLURM_ARRAY_TASK_ID:?slurm/sweep.sh runs as a job array: sbatch --array=0-N slurm/sweep.sh $SWEEP_DIR}"
cd "$GIGATRON_REPO"
mapfile -t _task < <("${GIGATRON_VENV:-$GIGATRON_REPO/.venv}/bin/gigatron" sweep task "$SWEEP_DIR" "$SLURM_ARRAY_TASK_ID")
[[ ${#_task[@]} -ge 2 ]] || { gigatron_log "no task $SLURM_ARRAY_TASK_ID in $SWEEP_DIR"; exit 2; }
export GIGATRON_CONFIG="${_task[0]}" GIGATRON_RUN_DIR="${_task[1]}"
gigatron_log "sweep $SWEEP_DIR task $SLURM_ARRAY_TASK_ID -> $GIGATRON_RUN_DIR"
gigatron_pretrain_job "${_task[0]}" "${_task[@]:2}" "$@"
