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
    """Final norm and output projection; returns this TP rank's vocab shard of the logits.

    With `returns_hidden` set (by the language-modeling loss under train.loss_chunk_tokens, see
    `objectives/lm.py`) it returns the normed hidden states instead, and the loss applies `output`
    chunk by chunk so that the whole logits tensor never exists.
    """

    returns_hidden: bool = False

    def __init__(self, vocab_size: int, hidden: int, factory: LayerFactory, std: float, eps: float,
                 norm: nn.Module | None = None) -> None:
        super().__init__()
        self.norm = factory.norm(hidden, eps) if norm is None else norm
        self.output = factory.column_linear(hidden, vocab_size, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return x if self.returns_hidden else self.output(x)


def tie_output_to_embedding(model: nn.Sequential) -> None:
    """Share the output projection with the token embedding (first and last layers)."""
    model[-1].output.weight = model[0].tokens.weight
