#!/usr/bin/env bash
# Text-to-image diffusion transformer pretraining (docs/t2i.md) with `gigatron pretrain` under
# SLURM: one srun task per GPU, requeued and resumed automatically when preempted or near the time
# limit. Submit from the repository root (the log directory must exist: SLURM does not create it):
#
#   mkdir -p logs
#   GIGATRON_CONFIG=configs/t2i/depth/d28.yaml GIGATRON_DATA=/shared/latents \
#       sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 slurm/pretrain_t2i.sh
#
# GPUs are requested on the command line (--gpus-per-node=8, matching --ntasks-per-node), not in
# this header, so the same script also runs on CPU-only clusters and the local test cluster.
# Variables (all optional; see slurm/common.sh and docs/slurm.md):
#   GIGATRON_CONFIG   run config                          default configs/t2i/smoke.yaml
#   GIGATRON_RUN_DIR  output_dir (checkpoints, metrics)   default runs/$SLURM_JOB_NAME
#   GIGATRON_DATA     image- or latent-shard dir(s), comma-separated
#   GIGATRON_VENV     environment with gigatron           default <repo>/.venv
#   GIGATRON_EXTRA    extra pretrain arguments, e.g. "--set train.steps=1000"
# Arguments after the script name are passed to `gigatron pretrain` too.
#
#SBATCH --job-name=gigatron-t2i
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

# sbatch runs a copy of this file from the spool directory: find the repository via GIGATRON_REPO,
# this file's location, the submit directory, or the job's recorded command.
for _dir in "${GIGATRON_REPO:-}" "$(dirname "${BASH_SOURCE[0]}")/.." "${SLURM_SUBMIT_DIR:-}" \
    "$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's/^ *Command=\(.*\)\/slurm\/[^/]*$/\1/p')"; do
    if [[ -n "$_dir" && -f "$_dir/slurm/common.sh" ]]; then GIGATRON_REPO="$(cd "$_dir" && pwd)"; break; fi
done
[[ -f "${GIGATRON_REPO:-}/slurm/common.sh" ]] || { echo "set GIGATRON_REPO to the gigatron checkout" >&2; exit 2; }
source "$GIGATRON_REPO/slurm/common.sh"

gigatron_pretrain_job configs/t2i/smoke.yaml "$@"
