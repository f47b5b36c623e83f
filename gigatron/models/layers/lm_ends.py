"""The two ends of every language model: token embedding and final norm + output projection."""

from __future__ import annotations

import torch
from torch import nn

from gigatron.models.layers.factory import LayerFactory


class Embedding(nn.Module):
    """Token ids [batch, seq] -> hidden states [batch, seq, hidden] (vocab-parallel at TP>1)."""

    def __init__(self, vocab_size: int, hidden: int, factory: LayerFactory, std: float) -> None:
        super().__init__()
        self.tokens = factory.embedding(vocab_size, hidden, std=std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(ids)


class Head(nn.Module):
    """Final norm and output projection; returns this TP rank's vocab shard of the logits."""

    def __init__(self, vocab_size: int, hidden: int, factory: LayerFactory, std: float, eps: float) -> None:
        super().__init__()
        self.norm = factory.norm(hidden, eps)
        self.output = factory.column_linear(hidden, vocab_size, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(x))


def tie_output_to_embedding(model: nn.Sequential) -> None:
    """Share the output projection with the token embedding (first and last layers)."""
    model[-1].output.weight = model[0].tokens.weight
