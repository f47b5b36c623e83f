"""Mamba-1's selective scan: sequential reference, chunked parallel form, decode step.

Per channel d and state index n (a diagonal, input-dependent linear recurrence):

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t        y_t = <C_t, h_t> + D u_t

The decay depends on n, so unlike SSD there is no matmul form. The chunked scan computes every
decay exp(delta_t A) once (one exp per state element, which is the bulk of the cost) and solves the
linear recurrence inside a chunk with a work-efficient tree scan over the time axis (see
`_linear_scan`). That form multiplies decays in [0, 1] and never divides by them, so it is stable
for any |delta A|: a huge step just drives products to 0, which is the right limit, and gradients
are those of the recurrence (no clamping). Chunks of `chunk_size` tokens are chained sequentially,
keeping temporaries cache-sized; the work is linear in L.

Shapes: u, delta [b, d, l] (delta positive: softplus and bias already applied); A [d, n] (negative);
B, C [b, n, l]; D [d] or None; states [b, d, n]. y comes back in u's dtype; states are fp32 (fp64 for
fp64 inputs, which tests use).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

Tensor = torch.Tensor

# Branching factor of the scan tree: each level folds this many steps into one, so a chunk of Q
# tokens takes log_k(Q) levels of a few elementwise ops on Q/k-token slabs.
_FANOUT = 4


def _up(t: Tensor) -> Tensor:
    """At least fp32: bf16/fp16 inputs are computed in fp32, fp64 inputs (tests) stay fp64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def selective_state_step(state: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One decode step, O(1) in the sequence length.

    state [b, d, n]; u, delta [b, d]; A [d, n]; B, C [b, n]; D [d] or None.
    Returns (y [b, d] in u's dtype, new_state [b, d, n] in fp32).
    """
    dtf, uf = _up(delta), _up(u)
    new_state = torch.exp(dtf[..., None] * _up(A)) * _up(state) + (dtf * uf)[..., None] * _up(B)[:, None]
    y = (new_state @ _up(C)[:, :, None]).squeeze(-1)
    if D is not None:
        y = y + uf * _up(D)
    return y.to(u.dtype), new_state


def selective_scan_sequential(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                              D: Tensor | None = None, initial_state: Tensor | None = None
                              ) -> tuple[Tensor, Tensor]:
    """Reference recurrence, one token at a time (slow; for tests and benchmarks).

    Returns (y [b, d, l] in u's dtype, final_state [b, d, n]); shapes in the module docstring.
    """
    b, d, length = u.shape
    state = _up(u.new_zeros(b, d, A.shape[-1])) if initial_state is None else _up(initial_state)
    ys = []
    for t in range(length):
        y, state = selective_state_step(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D)
        ys.append(y)
    y = torch.stack(ys, dim=-1) if ys else u.clone()
    return y, state


def _linear_scan(decay: Tensor, v: Tensor, h0: Tensor | None) -> Tensor:
    """All states of h_t = decay_t * h_{t-1} + v_t, time-major: decay, v [T, ...]; h0 [...] or None (zero).

    A work-efficient tree scan: fold each run of _FANOUT steps into one step (decay product and
    accumulated input), solve the folded recurrence recursively, then unfold. Only products of
    decays in [0, 1] appear, so nothing can overflow and underflow is to the right limit (0).
    """
    length = decay.shape[0]
    if length <= _FANOUT:
        states, h = [], h0
        for t in range(length):
            h = v[t] if h is None else decay[t] * h + v[t]
            states.append(h)
        return torch.stack(states)
    pad = (-length) % _FANOUT
    if pad:  # decay 1 and input 0: the padding carries the state unchanged and is cut off below
        decay = torch.cat([decay, decay.new_ones(pad, *decay.shape[1:])])
        v = torch.cat([v, v.new_zeros(pad, *v.shape[1:])])
    folds = decay.shape[0] // _FANOUT
    ds = decay.unflatten(0, (folds, _FANOUT)).unbind(1)  # _FANOUT slabs of [folds, ...]
    vs = v.unflatten(0, (folds, _FANOUT)).unbind(1)
    fold_decay, fold_v = ds[0], vs[0]
    for d_j, v_j in zip(ds[1:], vs[1:], strict=True):
        fold_v = d_j * fold_v + v_j
        fold_decay = fold_decay * d_j
    ends = _linear_scan(fold_decay, fold_v, h0)  # the state after each fold
    first = torch.zeros_like(ends[:1]) if h0 is None else h0[None]
    h = torch.cat([first, ends[:-1]])  # the state before each fold
    states = []
    for d_j, v_j in zip(ds[:-1], vs[:-1], strict=True):
        h = d_j * h + v_j
        states.append(h)
    states.append(ends)
    return torch.stack(states, dim=1).flatten(0, 1)[:length]


class _LinearScanFunction(torch.autograd.Function):
    """`_linear_scan` with its backward written out: the gradient of a linear recurrence is the same
    recurrence run backwards in time, so one more scan replaces autograd's replay of the tree's few
    hundred small ops (Mamba-1's step spent most of its time in them)."""

    @staticmethod
    def forward(ctx, decay: Tensor, v: Tensor, h0: Tensor | None) -> Tensor:
        states = _linear_scan(decay, v, h0)
        ctx.save_for_backward(decay, states, h0)
        return states

    @staticmethod
    def backward(ctx, grad_states: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        decay, states, h0 = ctx.saved_tensors
        # g_t = grad_t + decay_{t+1} g_{t+1}: the forward recurrence on time-reversed inputs.
        following = torch.cat([decay[1:], torch.zeros_like(decay[:1])])
        grad_h = _linear_scan(following.flip(0), grad_states.flip(0), None).flip(0)
        before = torch.cat([torch.zeros_like(states[:1]) if h0 is None else h0[None], states[:-1]])
        grad_h0 = None if h0 is None else decay[0] * grad_h[0]
        return grad_h * before, grad_h, grad_h0


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 64,
                           D: Tensor | None = None, initial_state: Tensor | None = None
                           ) -> tuple[Tensor, Tensor]:
    """Chunked selective scan, equal to `selective_scan_sequential` up to rounding; differentiable.

    Each chunk of `chunk_size` tokens is solved in parallel (see the module docstring); chunks are
    chained through their final states. Computes in fp32 at least; returns (y [b, d, l] in u's
    dtype, final_state [b, d, n]).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if u.shape[-1] == 0:
        return selective_scan_sequential(u, delta, A, B, C, D, initial_state)
    uf, af = _up(u), _up(A)
    # Time-major layout ([l, b, ...]): a chunk is a contiguous slab and every scan op works on whole
    # [b, d, n] rows, which vectorises well.
    df = _up(delta).permute(2, 0, 1).contiguous()
    drive = df * uf.permute(2, 0, 1)  # delta_t u_t: [l, b, d]
    bf = _up(B).permute(2, 0, 1).contiguous()[:, :, None]  # [l, b, 1, n]
    cf = _up(C).permute(2, 0, 1).contiguous()[:, :, None]
    state = None if initial_state is None else _up(initial_state)
    ys = []
    for start in range(0, u.shape[-1], chunk_size):
        part = slice(start, start + chunk_size)
        decay = torch.exp(df[part, :, :, None] * af)  # [q, b, d, n]
        h = _LinearScanFunction.apply(decay, drive[part, :, :, None] * bf[part], state)
        ys.append((h * cf[part]).sum(-1))  # <C_t, h_t>: [q, b, d]
        state = h[-1]
    y = (ys[0] if len(ys) == 1 else torch.cat(ys)).permute(1, 2, 0)
    if D is not None:
        y = y + uf * _up(D)[:, None]
    return y.to(u.dtype), state


@functools.cache
def _mamba_ssm_kernel() -> Callable | None:
    """mamba-ssm's CUDA selective scan, or None where it is not installed (checked once)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 64,
                   D: Tensor | None = None, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Selective scan with the best available implementation; same contract as `selective_scan_chunked`.

    CUDA tensors use mamba-ssm's kernel when installed; it cannot start from a given state, so calls
    with `initial_state` (prefill after cached tokens) take the chunked path.
    """
    kernel = _mamba_ssm_kernel() if u.is_cuda and initial_state is None else None
    if kernel is not None:
        # delta arrives already softplus-ed and biased, so the kernel must not apply softplus again.
        y, last_state = kernel(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=False,
                               return_last_state=True)
        return y, last_state
    return selective_scan_chunked(u, delta, A, B, C, chunk_size, D=D, initial_state=initial_state)
