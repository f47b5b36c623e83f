#!/usr/bin/env bash
# One-GPU smoke of the CUDA paths, for a machine with PyTorch+CUDA but without network access.
# Stages (each bounded by `timeout`, so one hang costs one stage, not the lease):
#   1. kernels: benchmarks/gpu_kernels.py (ceilings; mamba_ssm's Triton SSD against our PyTorch SSD;
#      SDPA backends; blockwise attention and the selective scan on CUDA); 1b. the chunked output
#      loss against the plain one (benchmarks/chunked_loss.py, bf16, vocabularies 32K-256K); 1c. the
#      GPU-only parity tests (fused blockwise attention with lse against the reference loop; the
#      Mamba models with mamba_ssm's / causal_conv1d's kernels against the PyTorch paths);
#   2. every family's smoke config in bf16 on the GPU (DeepSpeed ZeRO-1, NCCL with one rank), all at
#      once, plus the hybrid smoke in fp32; loss first -> last and exit code of each;
#   3. the bf16 hybrid checkpoint consolidated (with verification) and resumed as fp32 ZeRO-0;
#   4. throughput and peak memory of ~1.3B models (hybrid and GPT, bf16, seq 4096), one at a time,
#      the hybrid also with train.compile, and both with train.recompute=full, when the lease allows.
# Missing packages are expected as wheels in .whl/, the corpus and a Triton-only mamba_ssm in
# .gpucache/ (see docs/benchmarks.md "One-GPU smoke"). $OUT (default /tmp/gpu-smoke) receives
# summary.txt (also printed last), kernels.json and logs.tar.gz (every log and metrics.jsonl).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-smoke}
LOGS=/tmp/gpu-smoke-logs  # every log and metrics file, packed into $OUT/logs.tar.gz at the end
rm -rf "$LOGS" && mkdir -p "$OUT" "$LOGS"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
# mamba_ssm's Python sources without its CUDA extensions: its Triton SSD kernels import from there.
[ -d .gpucache/site ] && export PYTHONPATH=$PWD/.gpucache/site:${PYTHONPATH:-$PWD}
export GIGATRON_CACHE=${GIGATRON_CACHE:-$PWD/.gpucache} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
python3 - <<'EOF' 2>&1 | grep -v -i warn | tee -a "$SUMMARY"
import torch, deepspeed, megatron.core, triton
try:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
    ssd = "importable"
except Exception as exc:
    ssd = f"not importable ({type(exc).__name__}: {exc})"
print("torch", torch.__version__, "cuda", torch.version.cuda, "deepspeed", deepspeed.__version__,
      "megatron-core", megatron.core.__version__, "triton", triton.__version__, "|", torch.cuda.get_device_name(),
      "| mamba_ssm Triton SSD", ssd)
EOF
python3 -m gigatron data default 2>&1 | tail -1

note "[${SECONDS}s] == 1. kernels"
timeout 150 python3 benchmarks/gpu_kernels.py --out "$OUT/kernels.json" 2>&1 | grep -v -i warn | tee "$LOGS/kernels.log"

RUNS=/tmp/gpu-runs
rm -rf "$RUNS" && mkdir -p "$RUNS"
train() {  # name, config, extra --set overrides...; runs in the foreground
    local name=$1 config=$2; shift 2
    local sets=()
    for item in "$@"; do sets+=(--set "$item"); done
    timeout "${RUN_LIMIT:-180}" python3 -m gigatron pretrain --config "$config" --set output_dir="$RUNS/$name" \
        --set logging.progress_bar=false --set logging.tensorboard=false "${sets[@]}" > "$LOGS/$name.log" 2>&1
    echo $? > "$RUNS/$name.rc"
    cp "$RUNS/$name/metrics.jsonl" "$LOGS/$name.metrics.jsonl" 2>/dev/null
}
report() {  # name: exit code, loss first -> last, and the 2nd-half means of speed and memory
    local name=$1
    python3 - "$name" "$RUNS/$name/metrics.jsonl" "$(cat "$RUNS/$name.rc" 2>/dev/null)" <<'EOF' | tee -a "$SUMMARY"
import json, sys
name, path, rc = sys.argv[1:]
try:
    recs = [json.loads(line) for line in open(path)]
except OSError:
    recs = []
train = [r for r in recs if r.get("kind") == "train"]
if not train:
    print(f"{name:>22}: exit {rc}, no train records")
    raise SystemExit
late = train[len(train) // 2:]
mean = lambda k: sum(r[k] for r in late) / len(late) if all(r.get(k) is not None for r in late) else float("nan")
print(f"{name:>22}: exit {rc}, {len(train)} records, loss {train[0]['loss']:.4f} -> {train[-1]['loss']:.4f}, "
      f"tok/s {mean('tokens_per_s'):,.0f}, mfu {100 * mean('mfu'):.1f}%, peak mem {max(r['memory_gib'] for r in train):.2f} GiB")
EOF
}
SHORT=(train.precision=bf16 parallel.zero_stage=1 logging.interval=5 train.eval_interval=0 checkpoint.save_final=false)

note "[${SECONDS}s] == 1b. the chunked output loss (train.loss_chunk_tokens) vs the plain one, bf16"
timeout 90 python3 benchmarks/chunked_loss.py --device cuda --dtype bf16 --tokens 4096 --hidden 4096 --chunk 1024 \
    --vocab 32768,131072,262144 --rounds 5 2>&1 | grep -v -i warn | tee -a "$SUMMARY"

note "[${SECONDS}s] == 1c. GPU-only parity tests (fused blockwise attention with lse; Mamba kernels in the model)"
timeout 180 python3 -m pytest -q -rs -p no:cacheprovider tests/unit/test_ssm_cuda_kernels.py \
    tests/unit/test_context_parallel.py -k cuda 2>&1 | grep -v -i warn | tail -6 | tee -a "$SUMMARY"

note "[${SECONDS}s] == 2. every family's smoke config on the GPU (concurrently)"
train hybrid-fp32 configs/hybrid/smoke.yaml train.precision=fp32 parallel.zero_stage=1 logging.interval=10 &
train hybrid-bf16 configs/hybrid/smoke.yaml train.precision=bf16 parallel.zero_stage=1 logging.interval=10 &
train gpt-bf16 configs/gpt/smoke.yaml "${SHORT[@]}" train.steps=100 &
train tokenformer-bf16 configs/tokenformer/smoke.yaml "${SHORT[@]}" train.steps=100 &
train matformer-bf16 configs/matformer/smoke.yaml "${SHORT[@]}" train.steps=100 &
train fit-bf16 configs/fit/smoke.yaml "${SHORT[@]}" train.steps=100 &
train t2i-bf16 configs/t2i/smoke.yaml "${SHORT[@]}" train.steps=100 train.warmup_steps=10 &
train longctx-bf16 configs/longctx/smoke.yaml "${SHORT[@]}" train.steps=50 parallel.cp=1 &
train mamba1-bf16 configs/mamba/8b.yaml "${SHORT[@]}" train.tokens=null train.steps=50 train.warmup_steps=5 \
    model.vocab_size=2048 model.hidden_size=256 model.num_layers=4 parallel.tp=1 data.source=default \
    data.datasets=[] data.seq_len=512 train.micro_batch_size=4 train.global_batch_size=8 data.num_workers=1 \
    checkpoint.interval=0 data.verify=auto &
wait
for name in hybrid-fp32 hybrid-bf16 gpt-bf16 tokenformer-bf16 matformer-bf16 fit-bf16 t2i-bf16 longctx-bf16 mamba1-bf16; do
    report "$name"
done

note "[${SECONDS}s] == 3. bf16 checkpoint -> consolidated -> resumed as fp32 ZeRO-0"
timeout 90 python3 -m gigatron convert consolidate "$RUNS/hybrid-bf16/checkpoints/step_00000200" \
    "$RUNS/bf16-consolidated" > "$LOGS/consolidate.log" 2>&1
note "consolidate: exit $? $(grep -v -i warn "$LOGS/consolidate.log" | tail -1)"
train resumed-fp32 configs/hybrid/smoke.yaml train.precision=fp32 parallel.zero_stage=0 train.steps=220 \
    checkpoint.resume="$RUNS/bf16-consolidated" logging.interval=10
report resumed-fp32
grep -h "\[resume\]" "$LOGS/resumed-fp32.log" | head -2 | tee -a "$SUMMARY"

note "[${SECONDS}s] == 4. ~1.3B models, bf16, seq 4096, one at a time"
BIG=(train.precision=bf16 parallel.tp=1 parallel.zero_stage=1 train.tokens=null train.steps=12 train.warmup_steps=2
     train.micro_batch_size=2 train.global_batch_size=8 data.source=default data.datasets=[] data.seq_len=4096
     data.num_workers=2 data.verify=auto train.eval_interval=0 logging.interval=2 checkpoint.interval=0
     checkpoint.save_final=false)
RUN_LIMIT=150
train hybrid-1.3b configs/hybrid/1.3b.yaml "${BIG[@]}"
report hybrid-1.3b
# The same with compiled layers (train.compile): tokens/s and compile time against the run above.
[ "$SECONDS" -lt 360 ] && train hybrid-1.3b-compile configs/hybrid/1.3b.yaml "${BIG[@]}" train.compile=true \
    && report hybrid-1.3b-compile && grep -h "\[compile\]" "$LOGS/hybrid-1.3b-compile.log" | head -2 | tee -a "$SUMMARY"
[ "$SECONDS" -lt 420 ] || { note "[${SECONDS}s] skipping gpt-1.3b: the lease is short"; SKIP=1; }
[ -n "${SKIP:-}" ] || train gpt-1.3b configs/gpt/125m.yaml "${BIG[@]}" model.vocab_size=50304 model.hidden_size=2048 \
    model.num_layers=24 model.num_heads=16 model.ffn_hidden_size=5504
[ -n "${SKIP:-}" ] || report gpt-1.3b
# Full activation recomputation: tokens/s and MFU against the runs above (recompute costs ~1/3 more
# FLOPs that MFU does not count), while the lease allows.
[ "$SECONDS" -lt 480 ] && train hybrid-1.3b-recompute configs/hybrid/1.3b.yaml "${BIG[@]}" train.recompute=full \
    && report hybrid-1.3b-recompute
[ -z "${SKIP:-}" ] && [ "$SECONDS" -lt 540 ] && train gpt-1.3b-recompute configs/gpt/125m.yaml "${BIG[@]}" \
    model.vocab_size=50304 model.hidden_size=2048 model.num_layers=24 model.num_heads=16 model.ffn_hidden_size=5504 \
    train.recompute=full && report gpt-1.3b-recompute
note "[${SECONDS}s] done"
grep -h "^\[run\]" "$LOGS"/*.log | sed 's/^/  /' >> "$SUMMARY"
tar czf "$OUT/logs.tar.gz" -C "$LOGS" .
echo "== summary"
cat "$SUMMARY"
