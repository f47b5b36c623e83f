#!/usr/bin/env bash
# One-GPU smoke of the CUDA paths, for a machine with PyTorch+CUDA but without network access:
# the hybrid smoke model in fp32 and bf16 (DeepSpeed ZeRO-1, NCCL with one rank), tokens/s and MFU
# from metrics.jsonl, then the bf16 checkpoint consolidated (with verification) and resumed as fp32
# ZeRO-0. Missing packages are expected as wheels in .whl/ and the corpus in .gpucache/ (see
# docs/benchmarks.md); results are printed and copied to $OUT (default /tmp/gpu-smoke).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-smoke}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export GIGATRON_CACHE=${GIGATRON_CACHE:-$PWD/.gpucache} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, deepspeed, megatron.core; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, torch.cuda.get_device_name())" 2>&1 | grep -v WARNING
python3 -m gigatron data default 2>&1 | tail -1
RUNS=/tmp/gpu-runs
rm -rf "$RUNS"
train() {  # name, extra --set overrides...
    local name=$1; shift
    local sets=()
    for item in "$@"; do sets+=(--set "$item"); done
    python3 -m gigatron pretrain --config configs/hybrid/smoke.yaml --set output_dir="$RUNS/$name" \
        --set logging.progress_bar=false --set logging.tensorboard=false --set logging.interval=10 \
        "${sets[@]}" > "$OUT/$name.log" 2>&1
    echo "$name: exit $? $(grep -c '"kind": "train"' "$RUNS/$name/metrics.jsonl" 2>/dev/null) train records"
    cp "$RUNS/$name/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null
    python3 - "$RUNS/$name/metrics.jsonl" <<'EOF'
import json, sys
recs = [json.loads(line) for line in open(sys.argv[1])]
train = [r for r in recs if r["kind"] == "train"]
late = train[len(train) // 2:]
keys = [k for k in ("tokens_per_s", "mfu", "memory_gib") if k in late[-1]]
print("  first/last loss %.4f -> %.4f;" % (train[0]["loss"], train[-1]["loss"]),
      "; ".join(f"{k} {sum(r[k] for r in late) / len(late):.4g}" for k in keys
                if all(r.get(k) is not None for r in late)), "(mean over 2nd half)")
EOF
}
train fp32 train.precision=fp32 parallel.zero_stage=1
train bf16 train.precision=bf16 parallel.zero_stage=1
python3 -m gigatron convert consolidate "$RUNS/bf16/checkpoints/step_00000100" "$RUNS/bf16-consolidated" 2>&1 \
    | grep -v WARNING | tee "$OUT/consolidate.log"
train resumed-fp32 train.precision=fp32 parallel.zero_stage=0 checkpoint.resume="$RUNS/bf16-consolidated"
grep -h "\[resume\]" "$OUT/resumed-fp32.log" | head -2
