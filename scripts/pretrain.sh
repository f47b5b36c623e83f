#!/usr/bin/env bash
# The main job: bootstrap, then a tiny Mamba-2-Hybrid pretraining run on the bundled Shakespeare corpus.
# Extra arguments go to `gigatron pretrain`, e.g. scripts/pretrain.sh --set train.steps=50
# NPROC=2 runs two local ranks through `gigatron launch`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
CONFIG="${CONFIG:-configs/hybrid/smoke.yaml}"
if [ "${NPROC:-1}" -gt 1 ]; then
    exec "$VENV/bin/gigatron" launch --nproc "$NPROC" -- "$VENV/bin/gigatron" pretrain --config "$CONFIG" "$@"
fi
exec "$VENV/bin/gigatron" pretrain --config "$CONFIG" "$@"
