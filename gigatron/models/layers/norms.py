"""Normalisation layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gigatron.models.layers.init import mark_init
from gigatron.models.layers.sequence_parallel import sum_grad_over


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in fp32 for bf16 stability."""

    recompute_as = "layernorm"

    def __init__(self, dim: int, eps: float = 1e-5, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, grad_group: Any = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = mark_init(nn.Parameter(torch.empty(dim, device=device, dtype=dtype)), "ones")
        # Set where each TP rank applies the weight to part of the data (its sequence shard under
        # sequence parallelism, its heads for a QK-norm): the weight's gradient is summed over the group.
        self.grad_group = grad_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        weight = self.weight if self.grad_group is None else sum_grad_over(self.weight, self.grad_group)
        return normed.to(x.dtype) * weight


class LayerNorm(nn.Module):
    """LayerNorm with a learned scale and bias (torch.nn.LayerNorm's function), computed in fp32."""

    recompute_as = "layernorm"

    def __init__(self, dim: int, eps: float = 1e-5, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, grad_group: Any = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = mark_init(nn.Parameter(torch.empty(dim, device=device, dtype=dtype)), "ones")
        self.bias = mark_init(nn.Parameter(torch.empty(dim, device=device, dtype=dtype)), "zeros")
        self.grad_group = grad_group  # as RMSNorm's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if self.grad_group is not None:
            weight, bias = sum_grad_over(weight, self.grad_group), sum_grad_over(bias, self.grad_group)
        return torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(),
                                              self.eps).to(x.dtype)
