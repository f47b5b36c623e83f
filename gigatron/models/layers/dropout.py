"""Dropout whose mask does not depend on the layout."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gigatron.models.layers.sequence_parallel import SEQ_DIM, shard_sequence


class Dropout(nn.Module):
    """Inverted dropout with the mask drawn from torch's generator for the whole tensor.

    Under sequence parallelism (`group` set) each TP rank holds 1/tp of the sequence: it draws the
    mask of the whole sequence and keeps its own part, so the run equals the one without sequence
    parallelism, and the ranks' generators stay in step. A recomputed forward redraws the same mask
    (recomputation restores the generator state).
    """

    def __init__(self, p: float, group: Any = None) -> None:
        super().__init__()
        self.p, self.group = p, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = list(x.shape)
        if self.group is not None:
            shape[SEQ_DIM] *= dist.get_world_size(self.group)
        keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p)
        if self.group is not None:
            keep = shard_sequence(keep, self.group)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
