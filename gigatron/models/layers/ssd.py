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


# Decays below exp(-60) ~ 1e-26 are taken as exactly 0. Left as they are, products of them reach
# float32's subnormal range, where the CPU's matmul runs ~170x slower (x86 flushes subnormals only on
# threads that ask to, and torch's worker threads do not); a term 1e-26 below the token's own term
# (decay exp(0) = 1 on the diagonal) is invisible in fp32 anyway.
LOG_DECAY_FLOOR = -60.0


def _decay(log_decay: torch.Tensor) -> torch.Tensor:
    """exp(log_decay), exactly 0 below LOG_DECAY_FLOOR."""
    return torch.exp(F.threshold(log_decay, LOG_DECAY_FLOOR, float("-inf")))


def _cumulate(a: torch.Tensor) -> torch.Tensor:
    """Cumulative log-decay along the last dim, in fp64: its entries are differenced, where rounding
    them first is all the error left (callers round the result once where fp32 is enough)."""
    return a.double().cumsum(-1)


class _IntraChunk(torch.autograd.Function):
    """y = (CB ∘ decay) @ X inside each chunk, decay[i, j] = exp(a[j+1] + ... + a[i]) for j <= i, else 0.

    cb [..., 1, q, q] (one per group, shared by its r heads), a [..., r, q] (log-decay per token),
    xs [..., r, q, p]. Written out because autograd's version of these few lines makes ~15 passes over
    the [.., r, q, q] tensors (the largest of the SSD) where this makes 10.

    The sums a[j+1..i] are differences of cumulative sums, as mamba_ssm's kernels compute them, but
    taken in fp64: in fp32 the difference keeps the rounding of |cumsum| (3e-5 at the -300 that a
    fast-decaying head reaches in a chunk), which the gradient of dt showed. The gradient of a[k] is
    summed over the (i, j) pairs straddling k (prefix sums along each row), not as a difference of
    row and column totals: those cancel catastrophically for a fast-decaying head (the gradient of
    dt was off by 3e-4 relative at chunk 64), which is why mamba_ssm has a "stable" backward too.
    """

    @staticmethod
    def forward(ctx, cb: torch.Tensor, a: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        q = a.shape[-1]
        a_cum = _cumulate(a)
        log_decay = (a_cum[..., :, None] - a_cum[..., None, :]).to(a.dtype)
        log_decay.masked_fill_(torch.ones(q, q, dtype=torch.bool, device=a.device).triu(1), float("-inf"))
        decay = F.threshold_(log_decay, LOG_DECAY_FLOOR, float("-inf")).exp_()
        ctx.save_for_backward(cb, decay, xs)
        return (decay * cb) @ xs

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cb, decay, xs = ctx.saved_tensors
        grad_xs = (decay * cb).transpose(-1, -2) @ grad_y
        grad_masked = (grad_y @ xs.transpose(-1, -2)).mul_(decay)  # d loss / d cb, per head
        grad_cb = grad_masked.sum(-3, keepdim=True)
        grad_log_decay = grad_masked.mul_(cb)  # d exp(l) / dl = exp(l): zero where masked
        # a[k] is in log_decay[i, j] for j < k <= i: the row prefix sums before k, summed over rows i >= k.
        before = grad_log_decay.cumsum(-1).sub_(grad_log_decay)
        return grad_cb, before.tril_().sum(-2), grad_xs


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
    """
    b, length, h, p = x.shape
    g, n = B.shape[-2], B.shape[-1]
    r, q = h // g, chunk_size
    pad = (-length) % q
    c = (length + pad) // q
    # dt = 0 on padding: no decay and no input, so the final state is that of the real tokens.
    dtf = F.pad(dt.float(), (0, 0, 0, pad))
    # The discretised input dt * x, token-major [b, c, q, g, r, p] as it arrives.
    xs = (F.pad(x.float(), (0, 0, 0, 0, 0, pad)) * dtf[..., None]).view(b, c, q, g, r, p)
    bg = F.pad(B.float(), (0, 0, 0, 0, 0, pad)).view(b, c, q, g, n).transpose(2, 3)  # [b, c, g, q, n]
    cg = F.pad(C.float(), (0, 0, 0, 0, 0, pad)).view(b, c, q, g, n).transpose(2, 3)
    # Log-decay per token, and cumulated inside each chunk: [b, c, g, r, q].
    a = (A.float() * dtf).view(b, c, q, g, r).permute(0, 1, 3, 4, 2)
    a_cum = _cumulate(a).float()
    # 1. inside each chunk: y = (C B^T ∘ decay) X, the decay per head, C B^T once per group.
    xs_heads = xs.permute(0, 1, 3, 4, 2, 5)  # [b, c, g, r, q, p]
    y = _IntraChunk.apply((cg @ bg.transpose(-1, -2))[:, :, :, None], a, xs_heads)  # [b, c, g, r, q, p]
    # 2. each chunk's own contribution to its final state, heads folded into the columns of one
    #    matmul per (chunk, group):   [b, c, g, r*p, n]
    to_end = _decay(a_cum[..., -1:] - a_cum)  # [b, c, g, r, q]
    weighted = (xs_heads * to_end[..., None]).transpose(3, 4).reshape(b, c, g, q, r * p)
    states = (weighted.transpose(-1, -2) @ bg).view(b, c, g, r, p, n)
    # 3. pass states across chunks
    running = (xs.new_zeros(b, g, r, p, n) if initial_state is None
               else initial_state.float().view(b, g, r, p, n))
    # unbind, not indexing: the backward of x[:, k] writes a full-size zero gradient per chunk,
    # which made the recurrence quadratic in the number of chunks.
    chunk_decay = _decay(a_cum[..., -1])[..., None, None].unbind(1)  # c x [b, g, r, 1, 1]
    incoming = []
    for decay_k, state_k in zip(chunk_decay, states.unbind(1), strict=True):
        incoming.append(running)
        running = running * decay_k + state_k
    # 4. each chunk reads the state it starts from, decayed to each position: C @ state^T for all of
    #    a group's heads at once   [b, c, g, q, r*p]
    start = torch.stack(incoming, dim=1).view(b, c, g, r * p, n)
    y_in = (cg @ start.transpose(-1, -2)).view(b, c, g, q, r, p) * _decay(a_cum).transpose(3, 4)[..., None]
    y = (y.transpose(3, 4) + y_in).transpose(2, 3).reshape(b, c * q, h, p)[:, :length]  # [b, c, q, g, r, p]
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
