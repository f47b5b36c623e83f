"""Validation loss of a language model outside the trainer (tools, benchmarks).

Uses the same batches as the trainer's evaluation (`train.eval_batches` global batches of the
validation split, unshuffled, in the run's seed order), so the numbers compare with the
validation losses in a run's metrics.jsonl.
"""

from __future__ import annotations

import torch
from torch import nn

from gigatron.config import Config
from gigatron.models.layers.factory import LayerFactory
from gigatron.objectives import LanguageModelingTask


def validation_batches(cfg: Config, num_batches: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) micro-batches of the run's validation split; raises if it has none."""
    from gigatron.data.build import build_lm_data
    from gigatron.data.loader import GlobalBatchLoader

    data = build_lm_data(cfg.data)
    if not data.valid:
        raise ValueError(f"the data of this run ({', '.join(map(str, data.roots))}) has no validation split")
    t = cfg.train
    loader = GlobalBatchLoader(data.valid, t.global_batch_size, t.micro_batch_size, 0, 1, t.seed, shuffle=False,
                               weights=data.valid_weights, on_error=cfg.data.on_error)
    count = num_batches if num_batches is not None else max(1, t.eval_batches)
    return [LanguageModelingTask.split(mb) for _ in range(count) for mb in loader.next_batch()]


@torch.no_grad()
def lm_loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean over micro-batches of the mean next-token loss (the trainer's definition), TP=1 model."""
    task = LanguageModelingTask(LayerFactory())
    total = 0.0
    for inputs, labels in batches:
        total += float(task.loss(model(inputs), labels))
    return total / len(batches)
