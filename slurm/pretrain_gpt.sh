#!/usr/bin/env bash
# Pretrain the Llama-style Transformer baseline with `gigatron pretrain` under SLURM; the same
# variables, preemption and requeue as slurm/pretrain_hybrid.sh (see docs/slurm.md):
#
#   mkdir -p logs
#   GIGATRON_CONFIG=configs/gpt/8b.yaml GIGATRON_DATA=/shared/shards \
#       sbatch --nodes=8 --ntasks-per-node=8 --gpus-per-node=8 slurm/pretrain_gpt.sh
#
#SBATCH --job-name=gigatron-gpt
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

for _dir in "${GIGATRON_REPO:-}" "$(dirname "${BASH_SOURCE[0]}")/.." "${SLURM_SUBMIT_DIR:-}"; do
    if [[ -n "$_dir" && -f "$_dir/slurm/common.sh" ]]; then GIGATRON_REPO="$(cd "$_dir" && pwd)"; break; fi
done
[[ -f "${GIGATRON_REPO:-}/slurm/common.sh" ]] || { echo "set GIGATRON_REPO to the gigatron checkout" >&2; exit 2; }
source "$GIGATRON_REPO/slurm/common.sh"

gigatron_pretrain_job configs/gpt/smoke.yaml "$@"
