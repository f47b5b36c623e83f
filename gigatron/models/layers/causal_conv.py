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


class _ChannelsLastCausalConv(torch.autograd.Function):
    """The depthwise causal conv on x [b, l, d] as K shifted multiply-adds, forward and backward.

    The mixers hold xBC as [b, l, d]; F.conv1d wants [b, d, l] contiguous, so the transposes, the
    padding and oneDNN's depthwise backward cost ~3x these K fused passes (benchmarks/vs_reference.py's
    hybrid: ~90 ms against ~30 ms per layer at d=1152, l=2048, batch 2, forward and backward).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        k, length = weight.shape[-1], x.shape[1]
        ctx.weight_dtype = weight.dtype
        weight = weight.to(x.dtype)
        out = x * weight[:, -1] if bias is None else torch.addcmul(bias.to(x.dtype), x, weight[:, -1])
        for j in range(k - 1):
            shift = k - 1 - j  # tap j reads the input `shift` steps back
            if shift < length:
                out[:, shift:].addcmul_(x[:, :length - shift], weight[:, j])
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        k, length = weight.shape[-1], x.shape[1]
        grad_x = grad * weight[:, -1]
        grad_weight = torch.zeros_like(weight)
        grad_weight[:, -1] = (grad * x).sum((0, 1))
        for j in range(k - 1):
            shift = k - 1 - j
            if shift < length:
                grad_x[:, :length - shift].addcmul_(grad[:, shift:], weight[:, j])
                grad_weight[:, j] = (grad[:, shift:] * x[:, :length - shift]).sum((0, 1))
        grad_bias = None if ctx.bias_dtype is None else grad.sum((0, 1)).to(ctx.bias_dtype)
        return grad_x, grad_weight.to(ctx.weight_dtype), grad_bias


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = "silu") -> torch.Tensor:
    """y[:, c, t] = act(bias[c] + sum_k weight[c, k] * x[:, c, t - K + 1 + k]) for x [b, d, l], weight [d, K].

    Fastest when x is a transposed view of a [b, l, d] tensor, as the mixers pass it (the result is
    then one too); causal_conv1d's kernel on CUDA when installed.
    """
    if x.is_cuda and _cuda_kernel() is not None:
        return _cuda_kernel()(x, weight, bias, activation=activation)
    # The activation too on [b, l, d], where its gradient meets the caller's in the same layout.
    return _activate(_ChannelsLastCausalConv.apply(x.transpose(1, 2), weight, bias), activation).transpose(1, 2)


def causal_conv1d_step(conv_state: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None = None, activation: str | None = "silu"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: conv_state [b, d, K] holds the last K inputs; x [b, d] -> (y [b, d], new state)."""
    state = torch.cat([conv_state[:, :, 1:], x[:, :, None].to(conv_state.dtype)], dim=-1)
    y = (state * weight.to(state.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(state.dtype)
    return _activate(y, activation).to(x.dtype), state
