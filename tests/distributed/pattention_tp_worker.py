"""One rank of the Pattention TP check (run under `gigatron launch --nproc 2`): each rank builds its
token shard, runs forward and backward, and compares output, input gradient and its shard of the
token gradients with a TP=1 layer holding all tokens. Exits 1 with the differences on a mismatch."""

from __future__ import annotations

import sys

import torch

from gigatron.config.schema import ParallelConfig
from gigatron.launcher.dist_env import DistEnv, exit_distributed, init_distributed
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.parallel.layout import initialize_layout


def check(normalization: str, layout) -> list[str]:
    kwargs = dict(normalization=normalization, scale_tokens=None, key_std=0.3, value_std=0.1)
    sharded = LayerFactory(layout).pattention(16, 12, 32, **kwargs)
    full = LayerFactory().pattention(16, 12, 32, **kwargs)
    initialize_parameters(sharded, seed=9, tp_rank=layout.tp_rank, tp_size=layout.tp_size)
    initialize_parameters(full, seed=9)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(3, 7, 12, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for name, layer in (("tp", sharded), ("full", full)):
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        (out * weights).sum().backward()
        outputs[name] = (out.detach(), xi.grad, layer.key_tokens.grad, layer.value_tokens.grad)
    rows = slice(layout.tp_rank * 16, (layout.tp_rank + 1) * 16)
    problems = []
    pairs = [("output", outputs["tp"][0], outputs["full"][0]), ("input grad", outputs["tp"][1], outputs["full"][1]),
             ("key grad", outputs["tp"][2], outputs["full"][2][rows]),
             ("value grad", outputs["tp"][3], outputs["full"][3][rows])]
    for what, ours, reference in pairs:
        diff = float((ours - reference).abs().max())
        if diff > 1e-5:
            problems.append(f"{normalization} {what}: max |diff| {diff:.3g} on rank {layout.tp_rank}")
    return problems


def main() -> int:
    env = DistEnv.from_environ()
    init_distributed(env)
    layout = initialize_layout(ParallelConfig(tp=env.world_size))
    problems = [p for norm in ("l2_norm_gelu", "gelu_l2_norm", "softmax_n") for p in check(norm, layout)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    exit_distributed(main())
