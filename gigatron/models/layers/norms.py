"""Normalisation layers."""

from __future__ import annotations

import torch
from torch import nn

from gigatron.models.layers.init import mark_init


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in fp32 for bf16 stability."""

    recompute_as = "layernorm"

    def __init__(self, dim: int, eps: float = 1e-5, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = mark_init(nn.Parameter(torch.empty(dim, device=device, dtype=dtype)), "ones")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight
