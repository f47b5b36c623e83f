"""Activation bytes of one training sequence, counted from shapes under FakeTensorMode.

For the two ~1.3B models of the one-GPU smoke (benchmarks/gpu_smoke.sh, stage 4): what the forward
and the loss save for backward per sequence of `--seq` tokens in bf16, counted by
`gigatron.planning.saved_for_backward_bytes` on a model that holds no memory. docs/benchmarks.md compares the figures with the H200's
`torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from gigatron.config.loader import load_config
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.registry import build_model
from gigatron.planning.activations import saved_for_backward_bytes

MODELS = {  # the overrides of gpu_smoke.sh's stage 4
    "gpt-1.4b": ("configs/gpt/125m.yaml", ["model.vocab_size=50304", "model.hidden_size=2048", "model.num_layers=24",
                                           "model.num_heads=16", "model.ffn_hidden_size=5504"]),
    "hybrid-1.3b": ("configs/hybrid/1.3b.yaml", ["parallel.tp=1"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096)
    args = parser.parse_args()
    print(f"{'model':>12} {'params':>10} {'saved for backward per sequence':>32} {'seconds':>8}")
    for name, (path, overrides) in MODELS.items():
        cfg = load_config(path, overrides)
        start = time.perf_counter()
        with FakeTensorMode():
            factory = LayerFactory(device="cpu", params_dtype=torch.bfloat16)
            model = build_model(cfg.model, factory)
            params = list(model.parameters())
            tokens = torch.randint(0, cfg.model.vocab_size, (1, args.seq + 1))

            def step(model=model, tokens=tokens, factory=factory):  # the forward and the loss, as trained
                return factory.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).mean()

            saved = saved_for_backward_bytes(step, exclude=params)
        count = sum(p.numel() for p in params)
        print(f"{name:>12} {count / 1e6:>9.1f}M {saved / 2**30:>28.2f} GiB {time.perf_counter() - start:>8.1f}")


if __name__ == "__main__":
    main()
