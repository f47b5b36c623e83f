"""Stand-ins with the memory of mamba-ssm's CUDA kernels, for planning a GPU run under FakeTensorMode.

On a GPU the Mamba mixers call mamba-ssm's fused kernels (`models/layers/ssd.py`,
`selective_scan.py`), which save their inputs and a few small fp32 tensors for backward instead of
the chunked PyTorch path's intermediates. These autograd functions return outputs of the kernels'
shapes and dtypes and save what the kernels save (read from mamba-ssm 2.2's `ssd_combined.py` and
`selective_scan_interface.py`), so a plan for `device="cuda"` counts the GPU run's activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class _ChunkScanCombined(torch.autograd.Function):
    """mamba_chunk_scan_combined: saves out, x, dt, dA_cumsum [b, h, chunks, chunk] fp32, A, B, C, D."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, chunk_size: int):
        b, length, h, p = x.shape
        chunks = -(-length // chunk_size)
        out = torch.empty_like(x)
        dA_cumsum = torch.empty(b, h, chunks, chunk_size, dtype=torch.float32, device=x.device)
        final = torch.empty(b, h, p, B.shape[-1], dtype=torch.float32, device=x.device)
        ctx.save_for_backward(out, x, dt, dA_cumsum, A, B, C, *(() if D is None else (D,)))
        ctx.has_d = D is not None
        return out, final

    @staticmethod
    def backward(ctx, grad_out, grad_final):
        saved = ctx.saved_tensors
        _, x, dt, _, A, B, C = saved[:7]
        dD = torch.zeros_like(saved[7]) if ctx.has_d else None
        return (torch.zeros_like(x), torch.zeros_like(dt), torch.zeros_like(A), torch.zeros_like(B),
                torch.zeros_like(C), dD, None)


class _SelectiveScan(torch.autograd.Function):
    """selective_scan_fn: saves u, delta, A, B, C, D, out and the scan states x [b, d, chunks of 2048, 2n] fp32."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D):
        b, d, length = u.shape
        n = A.shape[-1]
        out = torch.empty_like(u)
        states = torch.empty(b, d, -(-length // 2048), 2 * n, dtype=torch.float32, device=u.device)
        last = torch.empty(b, d, n, dtype=torch.float32, device=u.device)
        ctx.save_for_backward(u, delta, A, B, C, *(() if D is None else (D,)), out, states)
        ctx.has_d = D is not None
        return out, last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        saved = ctx.saved_tensors
        u, delta, A, B, C = saved[:5]
        dD = torch.zeros_like(saved[5]) if ctx.has_d else None
        return (torch.zeros_like(u), torch.zeros_like(delta), torch.zeros_like(A), torch.zeros_like(B),
                torch.zeros_like(C), dD)


def _ssd(x, dt, A, B, C, chunk_size: int, D=None, initial_state=None):
    return _ChunkScanCombined.apply(x, dt, A, B, C, D, chunk_size)


def _selective_scan(u, delta, A, B, C, chunk_size: int = 64, D=None, initial_state=None):
    return _SelectiveScan.apply(u, delta, A, B, C, D)


@contextlib.contextmanager
def cuda_kernel_shapes() -> Iterator[None]:
    """Inside: the Mamba mixers call the stand-ins (the GPU path) instead of the chunked PyTorch scans."""
    from gigatron.models.layers import mamba1, mamba2

    saved = mamba2.ssd, mamba1.selective_scan
    mamba2.ssd, mamba1.selective_scan = _ssd, _selective_scan
    try:
        yield
    finally:
        mamba2.ssd, mamba1.selective_scan = saved
