"""Sequence parallelism: per-rank activation memory at TP=2 and TP=4, with and without it.

Each layout runs as `tp` gloo processes on the CPU. Every rank builds its share of a GPT or hybrid
model through the layer factory, runs forward and backward on one micro-batch and measures its peak
of live tensors (torch's MemTracker: activations and temporaries, not process RSS). Korthikanti et
al. (2022) predict activations per layer of sbh(10 + 24/t) bytes in 16-bit without sequence
parallelism and 34·sbh/t with it (fused attention: no s² term), so SP should save 1.29x at t=2 and
1.88x at t=4 on the Transformer layers; the embedding, head and loss are outside that count.

    .venv/bin/python benchmarks/sequence_parallel.py     # ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MIB = 2**20
MODELS = {
    "gpt": ("configs/gpt/smoke.yaml", ["model.hidden_size=512", "model.num_layers=4", "model.num_heads=8",
                                       "model.num_kv_heads=8", "model.vocab_size=2048"]),
    "hybrid": ("configs/hybrid/smoke.yaml", ["model.hidden_size=512", "model.num_heads=8", "model.num_kv_heads=8",
                                             "model.ngroups=4"]),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, tp: int, sp: bool, model: str, batch: int, seq: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=tp)
    from torch.distributed._tools.mem_tracker import MemTracker

    from gigatron.config.loader import load_config
    from gigatron.models.layers.factory import LayerFactory
    from gigatron.models.layers.init import initialize_parameters
    from gigatron.models.registry import build_model
    from gigatron.parallel.layout import initialize_layout

    path, overrides = MODELS[model]
    cfg = load_config(path, [*overrides, f"parallel.tp={tp}", f"parallel.sequence_parallel={str(sp).lower()}"])
    layout = initialize_layout(cfg.parallel)
    factory = LayerFactory(layout, device="cpu")
    net = build_model(cfg.model, factory)
    initialize_parameters(net, 0, layout.tp_rank, layout.tp_size)
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    tracker = MemTracker()
    tracker.track_external(net)
    with tracker:
        factory.cross_entropy(net(tokens[:, :-1]), tokens[:, 1:]).mean().backward()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    activations = sum(v for k, v in peak.items() if getattr(k, "value", k) in ("Activation", "Temp"))
    out[rank] = activations / MIB
    dist.destroy_process_group()


def measure(tp: int, sp: bool, model: str, batch: int, seq: int) -> float:
    """Rank 0's peak activation MiB for one forward and backward."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(tp, sp, model, batch, seq, _free_port(), out), nprocs=tp)
        return max(out.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    args = parser.parse_args()
    print("| model | tp | activations MiB per rank, TP | with SP | TP / SP |")
    print("|---|---:|---:|---:|---:|")
    for model in MODELS:
        for tp in (2, 4):
            plain = measure(tp, False, model, args.batch, args.seq)
            split = measure(tp, True, model, args.batch, args.seq)
            print(f"| {model} | {tp} | {plain:.1f} | {split:.1f} | {plain / split:.2f} |", flush=True)


if __name__ == "__main__":
    main()
