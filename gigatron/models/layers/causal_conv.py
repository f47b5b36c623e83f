"""Depthwise causal 1-D convolution (Mamba's short conv), with a one-token step for decoding."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def _cuda_kernel():
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return causal_conv1d_fn


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"activation {activation!r}; valid: silu, None")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = "silu") -> torch.Tensor:
    """y[:, c, t] = act(bias[c] + sum_k weight[c, k] * x[:, c, t - K + 1 + k]) for x [b, d, l], weight [d, K]."""
    if x.is_cuda and _cuda_kernel() is not None:
        return _cuda_kernel()(x, weight, bias, activation=activation)
    k = weight.shape[-1]
    y = F.conv1d(F.pad(x, (k - 1, 0)), weight[:, None, :].to(x.dtype), None if bias is None else bias.to(x.dtype),
                 groups=x.shape[1])
    return _activate(y, activation)


def causal_conv1d_step(conv_state: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None = None, activation: str | None = "silu"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: conv_state [b, d, K] holds the last K inputs; x [b, d] -> (y [b, d], new state)."""
    state = torch.cat([conv_state[:, :, 1:], x[:, :, None].to(conv_state.dtype)], dim=-1)
    y = (state * weight.to(state.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(state.dtype)
    return _activate(y, activation).to(x.dtype), state
