"""One rank of the TP=2 MatFormer check (run under `gigatron launch --nproc 2`): builds the model at
TP=2 from a checkpoint, runs it at several per-layer granularities on a fixed batch and writes the
gathered full-vocabulary logits (rank 0) to the given file, for comparison with extracted models.

    python matformer_tp_worker.py CKPT OUT.pt WIDTHS [WIDTHS ...]   (WIDTHS: "0.25" or "0.25,0.5,1,1")
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from gigatron.checkpoint.engine_load import load_model_weights
from gigatron.checkpoint.reader import open_checkpoint
from gigatron.checkpoint.verify import fixed_batch
from gigatron.config.schema import ParallelConfig
from gigatron.launcher.dist_env import DistEnv, exit_distributed, init_distributed
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.layers.nested_ffn import ffn_granularity
from gigatron.models.registry import build_model
from gigatron.parallel.layout import initialize_layout


def main() -> int:
    ckpt_path, out, *settings = sys.argv[1:]
    env = DistEnv.from_environ()
    init_distributed(env)
    layout = initialize_layout(ParallelConfig(tp=env.world_size))
    ckpt = open_checkpoint(ckpt_path)
    model = build_model(ckpt.cfg.model, LayerFactory(layout, device="cpu"))
    initialize_parameters(model, seed=0, tp_rank=layout.tp_rank, tp_size=layout.tp_size)
    load_model_weights(model, ckpt, layout.tp_rank, layout.tp_size)
    model.eval()
    ids = fixed_batch(ckpt.cfg.model.vocab_size, ckpt.cfg.data.seq_len)
    results = {}
    for setting in settings:
        values = [float(v) for v in setting.split(",")]
        with torch.no_grad(), ffn_granularity(model, values[0] if len(values) == 1 else values):
            shard = model(ids)
        pieces = [torch.empty_like(shard) for _ in range(layout.tp_size)]
        dist.all_gather(pieces, shard.contiguous())
        results[setting] = torch.cat(pieces, dim=-1)
    if layout.tp_rank == 0:
        torch.save(results, out)
    return 0


if __name__ == "__main__":
    exit_distributed(main())
