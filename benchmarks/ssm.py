"""State-space-model speed on the CPU: chunked SSD vs recurrence, linear scaling, training step vs
transformers' NemotronH, decode cost per token vs context for the hybrid and the Transformer.

    python benchmarks/ssm.py [--only ssd,scaling,train,decode]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.inference.cached import forward_cached, new_caches  # noqa: E402
from gigatron.models.gpt.config import GPTConfig  # noqa: E402
from gigatron.models.hybrid.config import HybridConfig  # noqa: E402
from gigatron.models.hybrid.model import flops_per_token  # noqa: E402
from gigatron.models.layers.factory import LayerFactory  # noqa: E402
from gigatron.models.layers.init import initialize_parameters  # noqa: E402
from gigatron.models.layers.ssd import ssd_chunked, ssd_sequential  # noqa: E402
from gigatron.models.registry import build_model  # noqa: E402
from gigatron.pretrain.peak_flops import measured_matmul_flops  # noqa: E402


def best_time(fn, repeats: int = 3) -> float:
    """Fastest of `repeats` runs (after one warm-up), in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ssd_inputs(length: int, h: int = 8, p: int = 64, n: int = 64, g: int = 1, grad: bool = False):
    x = torch.randn(1, length, h, p)
    dt = F.softplus(torch.randn(1, length, h) - 3)
    a = -(torch.rand(h) * 15 + 1)
    b, c = torch.randn(1, length, g, n), torch.randn(1, length, g, n)
    return [t.requires_grad_(grad) for t in (x, dt, a, b, c)]


def bench_ssd_vs_sequential(length: int = 2048, chunk: int = 64) -> None:
    inputs = ssd_inputs(length)
    with torch.no_grad():
        chunked = best_time(lambda: ssd_chunked(*inputs, chunk))
        sequential = best_time(lambda: ssd_sequential(*inputs), repeats=1)
    print(f"[ssd] L={length} h=8 p=64 n=64 chunk={chunk}: chunked {chunked * 1e3:.1f} ms, sequential "
          f"{sequential * 1e3:.1f} ms, speed-up {sequential / chunked:.1f}x (target >= 10x)")


def bench_scaling(lengths=(1024, 2048, 4096, 8192, 16384), chunk: int = 64) -> None:
    times = []
    for length in lengths:
        inputs = ssd_inputs(length, grad=True)

        def step(inputs=inputs):
            y, state = ssd_chunked(*inputs, chunk)
            (y.square().mean() + state.square().mean()).backward()

        times.append(best_time(step, repeats=3))
        print(f"[scaling] L={length}: forward+backward {times[-1] * 1e3:.1f} ms")
    xs, ys = [math.log(v) for v in lengths], [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    print(f"[scaling] growth exponent (log-log slope) {slope:.3f} (target <= 1.1)")


def decode_ms_per_token(model, context: int, new_tokens: int = 32) -> float:
    caches = new_caches(model, 1, context + new_tokens, "cpu", torch.float32)
    forward_cached(model, torch.randint(0, 2048, (1, context)), caches)  # prefill
    token = torch.randint(0, 2048, (1, 1))
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = forward_cached(model, token, caches)[:, -1:].argmax(-1)
    return (time.perf_counter() - start) / new_tokens * 1e3


def bench_decode(contexts=(256, 4096)) -> None:
    hidden, layers = 256, 8
    hybrid = HybridConfig(vocab_size=2048, hidden_size=hidden, num_layers=layers, pattern="M-M*M-M-", d_state=64,
                          headdim=32, ngroups=1, chunk_size=128, num_heads=8, num_kv_heads=2)
    gpt = GPTConfig(vocab_size=2048, hidden_size=hidden, num_layers=layers // 2, num_heads=8, num_kv_heads=2,
                    ffn_hidden_size=4 * hidden)
    for name, cfg in (("hybrid M-M*M-M-", hybrid), ("transformer", gpt)):
        model = build_model(cfg, LayerFactory())
        initialize_parameters(model, 0)
        model.eval()
        cost = {c: decode_ms_per_token(model, c) for c in contexts}
        text = ", ".join(f"context {c}: {ms:.2f} ms/token" for c, ms in cost.items())
        print(f"[decode] {name}: {text}; ratio {cost[contexts[-1]] / cost[contexts[0]]:.2f}")


def train_tokens_per_s(model, seq_len: int, batch: int, steps: int = 3) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 2048, (batch, seq_len + 1))

    def step():
        logits = model(ids[:, :-1])
        logits = logits.logits if hasattr(logits, "logits") else logits
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return batch * seq_len / best_time(step, repeats=steps)


def train_anchor_config() -> HybridConfig:
    """A ~7.7M hybrid `M-M*M-M-`, the shape of the NemotronH anchor measured on these machines."""
    return HybridConfig(vocab_size=2048, hidden_size=256, num_layers=8, pattern="M-M*M-M-", d_state=64, headdim=32,
                        ngroups=1, chunk_size=128, num_heads=8, num_kv_heads=2, ffn_hidden_size=1024)


def bench_train(lengths=(512, 2048)) -> None:
    cfg = train_anchor_config()
    ours = build_model(cfg, LayerFactory())
    initialize_parameters(ours, 0)
    params = sum(p.numel() for p in ours.parameters())
    peak = measured_matmul_flops()
    reference = None
    try:
        from gigatron.checkpoint.hf_export import to_hf_model

        reference = to_hf_model(cfg, ours)
    except ImportError as exc:
        print(f"[train] transformers' NemotronH unavailable ({exc}); reporting gigatron only")
    for length in lengths:
        batch = max(1, 4096 // length)
        tps = train_tokens_per_s(ours, length, batch)
        mfu = flops_per_token(cfg, length) * tps / peak
        line = f"[train] {params / 1e6:.1f}M hybrid, L={length}, batch {batch}: gigatron {tps:,.0f} tok/s (MFU {mfu:.0%})"
        if reference is not None:
            ref = train_tokens_per_s(reference, length, batch)
            line += f", NemotronH (transformers) {ref:,.0f} tok/s, ratio {tps / ref:.2f}x"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="ssd,scaling,train,decode")
    args = parser.parse_args()
    torch.manual_seed(0)
    parts = {"ssd": bench_ssd_vs_sequential, "scaling": bench_scaling, "train": bench_train, "decode": bench_decode}
    for name in args.only.split(","):
        parts[name]()


if __name__ == "__main__":
    main()
