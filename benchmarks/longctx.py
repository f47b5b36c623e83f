"""Longest sequence one attention layer can train on under a per-rank memory budget (CPU, fp32).

One causal attention layer (hidden 512, 8 query / 4 key-value heads, RoPE, q/k/v/o projections),
forward + backward on [1, L] tokens, each measurement in a fresh process so that its peak resident
memory (ru_maxrss, minus the process's size before the inputs exist) belongs to that run alone:

  (a) vanilla   the scores materialised: softmax(q kᵀ + mask) v in plain PyTorch
  (b) ours      gigatron's single-process attention (SDPA: PyTorch's flash kernel on the CPU)
  (c) ring      gigatron's ring attention over 4 gloo ranks (zigzag); the largest rank's peak

Memory is fitted against L (a: quadratic, b/c: linear) and the longest L within the budget is read
from the fit; lengths beyond the measured ones are marked as extrapolated. Writes a JSON of the
measurements, and PNGs of per-rank memory and of time per token against L.

    python benchmarks/longctx.py [--budget-gib 2] [--max-len 65536] [--out docs/images]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HIDDEN, HEADS, KV_HEADS = 512, 8, 4


def measure(mode: str, length: int, ranks: int = 1) -> dict:
    """Run one measurement in fresh process(es); returns peak MiB (max over ranks) and seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result"
        worker = [sys.executable, __file__, "--worker", mode, "--length", str(length), "--result", str(out)]
        # A fixed mmap threshold makes glibc return every freed tensor to the OS at once, so the
        # peak resident size tracks live tensors rather than allocator slack (same for all methods).
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // ranks)), "MALLOC_MMAP_THRESHOLD_": "65536"}
        command = worker if ranks == 1 else [sys.executable, "-m", "gigatron", "launch", "--nproc", str(ranks), "--",
                                             *worker]
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} L={length}: {proc.stderr[-2000:]}")
        rows = [json.loads(p.read_text()) for p in Path(tmp).glob("result*")]
    return {"mode": mode, "length": length, "peak_mib": max(r["peak_mib"] for r in rows),
            "seconds": max(r["seconds"] for r in rows)}


def worker(mode: str, length: int, result: Path) -> None:
    import resource
    import time

    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(REPO))
    from gigatron.models.layers.attention import GroupedQueryAttention
    from gigatron.models.layers.factory import LayerFactory
    from gigatron.models.layers.init import initialize_parameters

    cp = None
    rank = 0
    if mode == "ring":
        from gigatron.launcher.dist_env import DistEnv, init_distributed
        from gigatron.models.layers.cp.core import ContextParallel
        from gigatron.models.layers.cp.layout import SequenceLayout

        env = DistEnv.from_environ()
        init_distributed(env)
        rank = dist.get_rank()
        cp = ContextParallel(SequenceLayout(rank, dist.get_world_size(), zigzag=True), dist.group.WORLD, "ring")
    layer = GroupedQueryAttention(LayerFactory(cp=cp), HIDDEN, HEADS, KV_HEADS, HIDDEN // HEADS, 10000.0, std=0.02,
                                  out_std=0.02)
    initialize_parameters(layer, seed=0)
    if mode == "vanilla":
        def naive(q, k, v):
            k, v = k.repeat_interleave(HEADS // KV_HEADS, 1), v.repeat_interleave(HEADS // KV_HEADS, 1)
            scores = (q @ k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)
            causal = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).tril()
            return torch.softmax(scores.masked_fill(~causal, float("-inf")), -1) @ v

        layer.core = type("Naive", (), {"cp": None, "__call__": staticmethod(naive)})()
    local = length // (1 if cp is None else cp.size)
    if cp is not None:
        dist.barrier()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = torch.randn(1, local, HIDDEN, generator=torch.Generator().manual_seed(rank), requires_grad=True)
    start = time.perf_counter()
    layer(x).square().mean().backward()
    seconds = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    Path(f"{result}.{rank}").write_text(json.dumps({"peak_mib": peak, "seconds": seconds}))
    if cp is not None:
        dist.barrier()


def longest(points: list[dict], budget_mib: float, degree: int) -> tuple[int, bool, np.ndarray]:
    """(longest L within the budget from the fit, whether that is beyond the measured lengths, fit coefficients)."""
    lengths = np.array([p["length"] for p in points], dtype=float)
    memory = np.array([p["peak_mib"] for p in points])
    coef = np.polyfit(lengths, memory, degree)
    grid = np.arange(64, 1 << 26, 64, dtype=float)
    fits = grid[np.polyval(coef, grid) <= budget_mib]
    best = int(fits.max()) if fits.size else 0
    return best, bool(best > lengths.max()), coef


def plot(results: dict[str, list[dict]], fits: dict[str, np.ndarray], degrees: dict[str, int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"vanilla": "(a) vanilla (scores materialised)", "ours": "(b) ours, one process (SDPA)",
              "ring": "(c) ring attention, CP = 4 (per rank)"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, points in results.items():
        lengths = np.array([p["length"] for p in points])
        dots = axes[0].plot(lengths, [p["peak_mib"] for p in points], "o", label=labels[mode])[0]
        grid = np.linspace(lengths.min(), lengths.max(), 50)
        axes[0].plot(grid, np.polyval(fits[mode], grid), "--", alpha=0.6, color=dots.get_color())
        axes[1].plot(lengths, [1e6 * p["seconds"] / p["length"] for p in points], "o-", label=labels[mode])
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="peak memory per rank (MiB)",
                title="memory of one attention layer, forward + backward")
    axes[1].set(xscale="log", xlabel="sequence length L", ylabel="µs per token",
                title="time per token (CP = 4: 4 ranks sharing 2 cores)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "longctx_memory_time.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-gib", type=float, default=2.0)
    parser.add_argument("--max-len", type=int, default=65536)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--reuse", action="store_true",
                        help="take measurements already in OUT/longctx_points.jsonl (an earlier run) instead of "
                             "measuring them again")
    parser.add_argument("--worker", choices=["vanilla", "ours", "ring"])
    parser.add_argument("--length", type=int)
    parser.add_argument("--result", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.length, args.result)
        return
    plan = {"vanilla": [1024, 2048, 4096, 8192],
            "ours": [n for n in (4096, 8192, 16384, 32768, 65536) if n <= args.max_len],
            "ring": [n for n in (8192, 16384, 32768, 65536) if n <= args.max_len]}
    args.out.mkdir(parents=True, exist_ok=True)
    points_file = args.out / "longctx_points.jsonl"
    known = {}
    if args.reuse and points_file.is_file():
        known = {(p["mode"], p["length"]): p for p in map(json.loads, points_file.read_text().splitlines())}
    elif points_file.exists():
        points_file.unlink()
    results: dict[str, list[dict]] = {}
    for mode, lengths in plan.items():
        results[mode] = []
        for length in lengths:
            point = known.get((mode, length)) or measure(mode, length, ranks=4 if mode == "ring" else 1)
            if (mode, length) not in known:
                with points_file.open("a") as f:
                    f.write(json.dumps(point) + "\n")
            results[mode].append(point)
            print(f"{mode:8s} L={length:6d}: {point['peak_mib']:8.1f} MiB, {point['seconds']:7.2f} s", flush=True)
    budget = args.budget_gib * 1024
    degrees = {"vanilla": 2, "ours": 1, "ring": 1}
    best, fits = {}, {}
    for mode, points in results.items():
        length, extrapolated, coef = longest(points, budget, degrees[mode])
        best[mode], fits[mode] = (length, extrapolated), coef
    plot(results, fits, degrees, args.out)
    summary = {"budget_mib": budget, "results": results,
               "longest": {m: {"length": n, "extrapolated": e} for m, (n, e) in best.items()},
               "fit": {m: c.tolist() for m, c in fits.items()}}
    (args.out / "longctx.json").write_text(json.dumps(summary, indent=1))
    print(f"\n| method | longest L within {args.budget_gib:g} GiB per rank | |")
    print("|---|---:|---|")
    for mode, (length, extrapolated) in best.items():
        print(f"| {mode} | {length:,} | {'extrapolated from the fit' if extrapolated else 'within the measured range'} |")
    ring, ours, vanilla = best["ring"][0], best["ours"][0], best["vanilla"][0]
    print(f"\nring / vanilla = {ring / vanilla:.1f}× (target ≥ 40), ring / ours = {ring / ours:.2f}× (target ≥ 3.5)")


if __name__ == "__main__":
    main()
