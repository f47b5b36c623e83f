"""Mamba-2's state-space duality (SSD): the chunked algorithm, its sequential reference, one decode step.

Recurrence per head (x: [p], state: [p, n]):
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        y_t = h_t C_t + D * x_t
The chunked form ("minimal SSD", Dao & Gu 2024) splits the sequence into chunks of Q tokens:
inside a chunk the output is a masked quadratic form; chunk-final states are passed between
chunks by a short recurrence; each chunk then reads its incoming state. Work is linear in L.
Decay sums are computed in fp32 and in log space (segment sums), so exp never overflows.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _heads(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """[..., g, n] -> [..., h, n]: head i reads group i // (h / g)."""
    return t.repeat_interleave(nheads // t.shape[-2], dim=-2)


def segsum(x: torch.Tensor) -> torch.Tensor:
    """[..., T] -> [..., T, T] with out[i, j] = x[j+1] + ... + x[i] for i >= j, -inf above the diagonal."""
    t = x.shape[-1]
    rep = x[..., None].expand(*x.shape, t)  # rep[..., i, j] = x[i]
    below = torch.ones(t, t, dtype=torch.bool, device=x.device).tril(-1)
    sums = rep.masked_fill(~below, 0).cumsum(dim=-2)
    return sums.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=x.device).tril(0), float("-inf"))


def ssd_sequential(x, dt, A, B, C, D=None, initial_state=None):
    """Reference recurrence, one token at a time. Shapes in the module docstring of `ssd_chunked`."""
    b, length, h, p = x.shape
    n = B.shape[-1]
    state = x.new_zeros(b, h, p, n, dtype=torch.float32) if initial_state is None else initial_state.float()
    ys = []
    for t in range(length):
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    return torch.stack(ys, dim=1), state


# Long sequences are processed in passes of this many tokens, carrying the state between passes:
# exact, and it keeps each pass's working set cache-sized, which keeps the CPU cost linear in L.
TOKENS_PER_PASS = 2048


def ssd_chunked(x, dt, A, B, C, chunk_size: int, D=None, initial_state=None):
    """Chunked SSD (see `_ssd_pass`); sequences longer than TOKENS_PER_PASS run pass by pass."""
    per_pass = max(chunk_size, TOKENS_PER_PASS // chunk_size * chunk_size)
    if x.shape[1] <= per_pass:
        return _ssd_pass(x, dt, A, B, C, chunk_size, D, initial_state)
    outputs, state = [], initial_state
    for start in range(0, x.shape[1], per_pass):
        part = slice(start, start + per_pass)
        y, state = _ssd_pass(x[:, part], dt[:, part], A, B[:, part], C[:, part], chunk_size, D, state)
        outputs.append(y)
    return torch.cat(outputs, dim=1), state


def _ssd_pass(x, dt, A, B, C, chunk_size: int, D=None, initial_state=None):
    """Chunked SSD.

    x [b, l, h, p]; dt [b, l, h] (positive, after softplus and bias); A [h] (negative); B, C
    [b, l, g, n] with h % g == 0; D [h] or None; initial_state [b, h, p, n] or None.
    Returns (y [b, l, h, p], final_state [b, h, p, n]); y in x's dtype, the state in fp32.

    Heads are viewed as [g, r] (r = h / g heads per group) so C·B^T is computed once per group,
    and every contraction is a batched matmul; the chunk-to-chunk recurrence is a loop over chunks
    (linear in L, unlike the all-pairs form over chunk boundaries).
    """
    b, length, h, p = x.shape
    g, n = B.shape[-2], B.shape[-1]
    r, q = h // g, chunk_size
    pad = (-length) % q
    c = (length + pad) // q
    # dt = 0 on padding: no decay and no input, so the final state is that of the real tokens.
    xf, dtf = F.pad(x.float(), (0, 0, 0, 0, 0, pad)), F.pad(dt.float(), (0, 0, 0, pad))
    bg = F.pad(B.float(), (0, 0, 0, 0, 0, pad)).view(b, c, q, g, n).permute(0, 3, 1, 2, 4)[:, :, None]
    cg = F.pad(C.float(), (0, 0, 0, 0, 0, pad)).view(b, c, q, g, n).permute(0, 3, 1, 2, 4)[:, :, None]
    # [b, g, r, c, q, p]: the discretised input dt * x
    xs = (xf * dtf[..., None]).view(b, c, q, g, r, p).permute(0, 3, 4, 1, 2, 5)
    a = (A.float() * dtf).view(b, c, q, g, r).permute(0, 3, 4, 1, 2)  # [b, g, r, c, q]
    a_cum = a.cumsum(-1)
    # 1. inside each chunk: y = (C B^T ∘ decay) X          scores: [b, g, r, c, q, q]
    scores = (cg @ bg.transpose(-1, -2)) * torch.exp(segsum(a))
    y = scores @ xs
    # 2. each chunk's own contribution to its final state: [b, g, r, c, p, n]
    states = (xs * torch.exp(a_cum[..., -1:] - a_cum)[..., None]).transpose(-1, -2) @ bg
    # 3. pass states across chunks
    running = (xf.new_zeros(b, g, r, p, n) if initial_state is None
               else initial_state.float().view(b, g, r, p, n))
    # unbind, not indexing: the backward of x[:, :, :, k] writes a full-size zero gradient per chunk,
    # which made the recurrence quadratic in the number of chunks.
    chunk_decay = torch.exp(a_cum[..., -1])[..., None, None].unbind(3)  # c x [b, g, r, 1, 1]
    incoming = []
    for decay_k, state_k in zip(chunk_decay, states.unbind(3), strict=True):
        incoming.append(running)
        running = running * decay_k + state_k
    # 4. each chunk reads the state it starts from, decayed to each position
    y = y + (cg @ torch.stack(incoming, dim=3).transpose(-1, -2)) * torch.exp(a_cum)[..., None]
    y = y.permute(0, 3, 4, 1, 2, 5).reshape(b, c * q, h, p)[:, :length]
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(x.dtype), running.reshape(b, h, p, n)


def ssd_step(state, x, dt, A, B, C, D=None):
    """One decode step: state [b, h, p, n]; x [b, h, p]; dt [b, h]; B, C [b, g, n] -> (y [b, h, p], state)."""
    h = x.shape[1]
    bh, ch = _heads(B.float(), h), _heads(C.float(), h)
    dtf = dt.float()
    decay = torch.exp(dtf * A.float())[..., None, None]
    state = state.float() * decay + (dtf[..., None] * x.float())[..., None] * bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, ch)
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(x.dtype), state


@functools.cache
def _cuda_kernel():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        return None
    return mamba_chunk_scan_combined


def ssd(x, dt, A, B, C, chunk_size: int, D=None, initial_state=None):
    """mamba-ssm's fused kernel on CUDA when installed, else `ssd_chunked`; same contract."""
    if x.is_cuda and _cuda_kernel() is not None:
        y, final = _cuda_kernel()(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state,
                                  dt_softplus=False, return_final_states=True)
        return y, final
    return ssd_chunked(x, dt, A, B, C, chunk_size, D=D, initial_state=initial_state)
