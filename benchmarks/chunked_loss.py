"""The chunked output loss (train.loss_chunk_tokens) vs the plain one: peak memory and time of the
output layer + cross-entropy, forward and backward, at vocabularies of 32K to 256K.

For each vocabulary: hidden states [tokens, hidden] (the final norm's output) and an output weight
[vocab, hidden] (fp32 on the CPU by default; `--device cuda --dtype bf16` on a GPU); the plain path is `LayerFactory.cross_entropy` on the whole
logits (what train.loss_chunk_tokens=0 runs), the chunked one `LayerFactory.output_cross_entropy`.
Peak memory is the bytes of tensors made during forward + backward, beyond the inputs and the
weight (CPU: `LiveTensorBytes`; CUDA: `torch.cuda.max_memory_allocated` above what was allocated
before); time is the median of alternating rounds in one process, so the ratio is measured under
the same load.

    python benchmarks/chunked_loss.py [--tokens 2048] [--hidden 256] [--chunk 1024] [--rounds 3]
    python benchmarks/chunked_loss.py --device cuda --dtype bf16 --tokens 4096 --hidden 4096   # a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.models.layers.factory import LayerFactory  # noqa: E402
from gigatron.planning.measure import LiveTensorBytes  # noqa: E402

GIB = 2**30


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(vocab: int, tokens: int, hidden_size: int, chunk: int, rounds: int, device: str = "cpu",
            dtype: torch.dtype = torch.float32) -> dict:
    """Peak bytes and median seconds of forward + backward, plain and chunked, at one vocabulary."""
    factory = LayerFactory(device=device, params_dtype=dtype)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, tokens, hidden_size, generator=g).to(device, dtype).requires_grad_(True)
    output = torch.nn.Linear(hidden_size, vocab, bias=False, device=device, dtype=dtype)
    with torch.no_grad():
        output.weight.copy_(torch.randn(vocab, hidden_size, generator=g) * 0.02)
    labels = torch.randint(0, vocab, (1, tokens), generator=g).to(device)
    weights = torch.full((1, tokens), 1.0 / tokens, device=device)
    runs = {
        "plain": lambda: (factory.cross_entropy(output(hidden), labels) * weights).sum().backward(),
        "chunked": lambda: factory.output_cross_entropy(hidden, output, labels, weights, chunk).backward(),
    }
    peaks, times = {}, {name: [] for name in runs}
    for name, run in runs.items():
        if device == "cuda":
            run()  # warm up kernels and the allocator's pools first
            hidden.grad = output.weight.grad = None
            _synchronize(device)
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run()
            _synchronize(device)
            peaks[name] = torch.cuda.max_memory_allocated() - before
        else:
            with LiveTensorBytes() as live:
                run()
            peaks[name] = live.peak
        hidden.grad = output.weight.grad = None
    for _ in range(rounds):
        for name, run in runs.items():
            _synchronize(device)
            start = time.perf_counter()
            run()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
            hidden.grad = output.weight.grad = None
    return {"peak": peaks, "seconds": {name: statistics.median(t) for name, t in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--vocab", default="32768,65536,131072,262144")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.tokens} tokens, hidden {args.hidden}, {args.dtype}, chunk {args.chunk} tokens, {where}; peak = "
          "tensor bytes made during forward + backward (inputs and weight excluded)\n")
    print("| vocabulary | plain peak | chunked peak | peak ratio | plain s | chunked s | time ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for vocab in (int(v) for v in args.vocab.split(",")):
        m = measure(vocab, args.tokens, args.hidden, args.chunk, args.rounds, args.device, dtype)
        peak, seconds = m["peak"], m["seconds"]
        print(f"| {vocab:,} | {peak['plain'] / GIB:.2f} GiB | {peak['chunked'] / GIB:.2f} GiB | "
              f"{peak['chunked'] / peak['plain']:.2f} | {seconds['plain']:.2f} | {seconds['chunked']:.2f} | "
              f"{seconds['chunked'] / seconds['plain']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
