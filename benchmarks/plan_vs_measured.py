"""The memory planner against measurement: each run's per-rank peak predicted by `gigatron plan`'s
model (`planning.memory.plan_memory`, device cpu) and measured by training it for real with
`logging.memory_trace` (live tensor bytes from the model's construction to the end, on every rank).

Runs span families, TP, SP, PP, CP, ZeRO stages and recompute; each is a short fp32 run of a smoke
config on 1-4 gloo ranks. The table gives the largest rank's measured and predicted peak (the plan of
that rank's pipeline stage) and their ratio.

    .venv/bin/python benchmarks/plan_vs_measured.py            # ~10 minutes on 2 cores
    .venv/bin/python benchmarks/plan_vs_measured.py --only gpt-tp2-sp
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gigatron.config.loader import load_config
from gigatron.planning.memory import plan_memory

MIB = 2**20
REPO = Path(__file__).resolve().parents[1]
COMMON = ["train.steps=2", "train.warmup_steps=2", "train.eval_interval=0", "checkpoint.save_final=false", "logging.memory_trace=true",
          "logging.progress_bar=false", "logging.tensorboard=false", "data.num_workers=0"]
# name -> (config, ranks, overrides)
RUNS: dict[str, tuple[str, int, list[str]]] = {
    "gpt": ("configs/gpt/smoke.yaml", 1, []),
    "gpt-recompute-full": ("configs/gpt/smoke.yaml", 1, ["train.recompute=full"]),
    "gpt-tp2": ("configs/gpt/smoke.yaml", 2, ["parallel.tp=2"]),
    "gpt-tp2-sp": ("configs/gpt/smoke.yaml", 2, ["parallel.tp=2", "parallel.sequence_parallel=true"]),
    "gpt-pp2": ("configs/gpt/smoke.yaml", 2, ["parallel.pp=2"]),
    "gpt-zero1": ("configs/gpt/smoke.yaml", 2, ["parallel.zero_stage=1"]),
    "gpt-zero2": ("configs/gpt/smoke.yaml", 2, ["parallel.zero_stage=2"]),
    "gpt-zero3": ("configs/gpt/smoke.yaml", 2, ["parallel.zero_stage=3"]),
    "hybrid": ("configs/hybrid/smoke.yaml", 1, []),
    "hybrid-cp2": ("configs/hybrid/smoke.yaml", 2, ["parallel.cp=2"]),
    "hybrid-tp2-sp": ("configs/hybrid/smoke.yaml", 2, ["parallel.tp=2", "parallel.sequence_parallel=true"]),
    "hybrid-tp2-sp-selective": ("configs/hybrid/smoke.yaml", 2, [
        "parallel.tp=2", "parallel.sequence_parallel=true", "train.recompute=selective",
        "train.recompute_modules=[mamba,mlp]"]),
    "tokenformer": ("configs/tokenformer/smoke.yaml", 1, []),
    "fit-recompute-full": ("configs/fit/smoke.yaml", 1, ["train.recompute=full"]),
    "t2i": ("configs/t2i/smoke.yaml", 1, []),
    "t2i-tp2-selective": ("configs/t2i/smoke.yaml", 2, ["parallel.tp=2", "train.recompute=selective"]),
}


def measure(config: str, ranks: int, overrides: list[str]) -> list[int]:
    """Every rank's peak live tensor bytes in a real 2-step run."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "gigatron", "pretrain", "--config", config, "--set", f"output_dir={out}"]
        for item in COMMON + overrides:
            cmd += ["--set", item]
        if ranks > 1:
            cmd = [sys.executable, "-m", "gigatron", "launch", "--nproc", str(ranks), "--", *cmd]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // ranks))}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        return next(r for r in records if r["kind"] == "memory")["peak_bytes"]


def predict(config: str, ranks: int, overrides: list[str]) -> list[int]:
    """Every rank's planned peak (its stage's plan), device cpu."""
    cfg = load_config(config, overrides)
    p = cfg.parallel
    p.dp = ranks // (p.tp * p.pp * p.cp)
    plans = plan_memory(cfg, device="cpu")
    per_stage = ranks // p.pp
    return [plans[rank // per_stage].allocated for rank in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run names (default: all)")
    args = parser.parse_args()
    print("| run | ranks | measured MiB (largest rank) | planned MiB | planned / measured |")
    print("|---|---:|---:|---:|---:|")
    for name, (config, ranks, overrides) in RUNS.items():
        if args.only and name not in args.only:
            continue
        measured = measure(config, ranks, overrides)
        planned = predict(config, ranks, overrides)
        worst = max(range(ranks), key=lambda r: measured[r])
        detail = "" if ranks == 1 else "  (per rank: " + ", ".join(
            f"{m / MIB:.1f}/{q / MIB:.1f}" for m, q in zip(measured, planned, strict=True)) + ")"
        print(f"| {name} | {ranks} | {measured[worst] / MIB:.1f} | {planned[worst] / MIB:.1f} | "
              f"{planned[worst] / measured[worst]:.3f} |{detail}", flush=True)


if __name__ == "__main__":
    main()
