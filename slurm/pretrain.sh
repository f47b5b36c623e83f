#!/usr/bin/env bash
# The sbatch script of every gigatron pretraining run: `gigatron pretrain` with one srun task per
# GPU, requeued and resumed automatically when preempted or near the time limit. The family (GPT,
# Mamba, hybrid, TokenFormer, MatFormer, FIT, text-to-image, long context) is the config's
# model.family; nothing here depends on it. Submit from the repository root (the log directory must
# exist: SLURM does not create it):
#
#   mkdir -p logs
#   GIGATRON_CONFIG=configs/hybrid/8b.yaml GIGATRON_DATA=/shared/shards \
#       sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 slurm/pretrain.sh
#
# slurm/pretrain_{hybrid,gpt,longctx,fit,t2i}.sh are this script with another job name and default
# config (a few lines each). GPUs are requested on the command line (--gpus-per-node=8, matching
# --ntasks-per-node), not in this header, so the same script also runs on CPU-only clusters and
# the local test cluster.
# Variables (all optional; see slurm/common.sh and docs/slurm.md):
#   GIGATRON_CONFIG   run config                          default $GIGATRON_DEFAULT_CONFIG, else
#                                                         configs/hybrid/smoke.yaml
#   GIGATRON_RUN_DIR  output_dir (checkpoints, metrics)   default runs/$SLURM_JOB_NAME
#   GIGATRON_DATA     shard dataset dir(s), comma-separated -> data.source=shards
#   GIGATRON_VENV     environment with gigatron           default <repo>/.venv
#   GIGATRON_EXTRA    extra pretrain arguments, e.g. "--set train.steps=1000"
# Arguments after the script name are passed to `gigatron pretrain` too.
#
#SBATCH --job-name=gigatron
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

# sbatch runs a copy of the submitted file from the spool directory: find the repository via
# GIGATRON_REPO, this file's location, the submit directory, or the job's recorded command.
for _dir in "${GIGATRON_REPO:-}" "$(dirname "${BASH_SOURCE[0]}")/.." "${SLURM_SUBMIT_DIR:-}" \
    "$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's/^ *Command=\(.*\)\/slurm\/[^/]*$/\1/p')"; do
    if [[ -n "$_dir" && -f "$_dir/slurm/common.sh" ]]; then GIGATRON_REPO="$(cd "$_dir" && pwd)"; break; fi
done
[[ -f "${GIGATRON_REPO:-}/slurm/common.sh" ]] || { echo "set GIGATRON_REPO to the gigatron checkout" >&2; exit 2; }
source "$GIGATRON_REPO/slurm/common.sh"

gigatron_pretrain_job "${GIGATRON_DEFAULT_CONFIG:-configs/hybrid/smoke.yaml}" "$@"
