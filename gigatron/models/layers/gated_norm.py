"""Mamba-2's gated RMSNorm: norm(y * silu(z)), normalised per group of channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import mark_init


class GatedGroupRMSNorm(nn.Module):
    """RMS over groups of `group_size` channels; with TP each rank holds whole groups, so it is exact."""

    def __init__(self, factory: LayerFactory, dim: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = mark_init(factory.parameter((dim,), shard_dim=0), "ones")

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gated = (y * F.silu(z)).float()
        grouped = gated.unflatten(-1, (-1, self.group_size))
        normed = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.flatten(-2).to(y.dtype) * self.weight
