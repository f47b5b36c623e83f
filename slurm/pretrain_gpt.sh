#!/usr/bin/env bash
# The Llama-style Transformer baseline (docs/gpt.md).
# slurm/pretrain.sh with job name gigatron-gpt and default config configs/gpt/smoke.yaml;
# every variable, argument and behaviour is that script's (docs/slurm.md):
#
#   GIGATRON_CONFIG=configs/gpt/8b.yaml GIGATRON_DATA=/shared/data \
#       sbatch --nodes=8 --ntasks-per-node=8 --gpus-per-node=8 slurm/pretrain_gpt.sh
#
# sbatch reads #SBATCH lines only from the submitted file, so they are repeated here; a test
# checks that they equal slurm/pretrain.sh's apart from the job name.
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
GIGATRON_DEFAULT_CONFIG=configs/gpt/smoke.yaml
for _dir in "${GIGATRON_REPO:-}" "$(dirname "${BASH_SOURCE[0]}")/.." "${SLURM_SUBMIT_DIR:-}" \
    "$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's/^ *Command=\(.*\)\/slurm\/[^/]*$/\1/p')"; do
    if [[ -n "$_dir" && -f "$_dir/slurm/pretrain.sh" ]]; then GIGATRON_REPO="$(cd "$_dir" && pwd)"; break; fi
done
source "${GIGATRON_REPO:?set GIGATRON_REPO to the gigatron checkout}/slurm/pretrain.sh"
