"""One rank of the chunked output-loss TP check (run under `gigatron launch --nproc 2`): the output
layer split over the vocabulary (plain TP, and with sequence parallelism, where each rank holds half
of the sequence) gives the loss, the input gradient and this rank's rows of the weight gradient of
the TP=1 plain cross-entropy. Exits 1 with the differences on a mismatch."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from gigatron.config.schema import ParallelConfig
from gigatron.launcher.dist_env import DistEnv, exit_distributed, init_distributed
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.parallel.layout import initialize_layout

HIDDEN, VOCAB, BATCH, SEQ = 16, 50, 3, 8


def check(layout, sequence_parallel: bool) -> list[str]:
    factory = LayerFactory(layout)
    sharded, full = factory.column_linear(HIDDEN, VOCAB, std=0.3), LayerFactory().column_linear(HIDDEN, VOCAB, std=0.3)
    initialize_parameters(sharded, seed=4, tp_rank=layout.tp_rank, tp_size=layout.tp_size)
    initialize_parameters(full, seed=4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, SEQ, HIDDEN, generator=g)
    labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    weights = torch.rand(BATCH, SEQ, generator=g)

    local = x.chunk(layout.tp_size, dim=1)[layout.tp_rank] if sequence_parallel else x
    ours_x = local.clone().requires_grad_(True)
    loss = factory.output_cross_entropy(ours_x, sharded, labels, weights, chunk=5)
    (2.0 * loss).backward()

    ref_x = x.clone().requires_grad_(True)
    ref = (F.cross_entropy(full(ref_x).flatten(0, 1), labels.flatten(), reduction="none") * weights.flatten()).sum()
    (2.0 * ref).backward()
    ref_grad_x = ref_x.grad.chunk(layout.tp_size, dim=1)[layout.tp_rank] if sequence_parallel else ref_x.grad
    rows = slice(layout.tp_rank * VOCAB // 2, (layout.tp_rank + 1) * VOCAB // 2)
    problems = []
    for what, a, b in (("loss", loss.detach(), ref.detach()), ("input grad", ours_x.grad, ref_grad_x),
                       ("weight grad", sharded.weight.grad, full.weight.grad[rows])):
        diff = float((a - b).abs().max())
        if diff > 1e-5:
            problems.append(f"sequence_parallel={sequence_parallel} {what}: max |diff| {diff:.3g} on rank {layout.tp_rank}")
    return problems


def main() -> int:
    env = DistEnv.from_environ()
    init_distributed(env)
    problems = []
    for sp in (False, True):
        layout = initialize_layout(ParallelConfig(tp=env.world_size, sequence_parallel=sp))
        problems += check(layout, sp)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    exit_distributed(main())
