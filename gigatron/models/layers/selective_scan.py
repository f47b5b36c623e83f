"""Mamba-1's selective scan: chunked parallel form, sequential reference, one decode step.

Per channel d and state index n:  h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t ;  y_t = <C_t, h_t> + D u_t.
The chunked form computes a chunk of Q steps at once from pairwise decays exp(S_t - S_s)
(S = cumulative delta·A inside the chunk, s <= t, so every exponent is <= 0 and nothing
overflows), and chains chunks through their final states. Work grows linearly with L.
"""

from __future__ import annotations

import functools

import torch

from gigatron.models.layers.ssd import segsum


def selective_scan_sequential(u, delta, A, B, C, D=None, initial_state=None):
    """Reference: u, delta [b, d, l]; A [d, n]; B, C [b, n, l]; D [d]; state [b, d, n] -> (y [b, d, l], state)."""
    b, d, length = u.shape
    state = u.new_zeros(b, d, A.shape[-1], dtype=torch.float32) if initial_state is None else initial_state.float()
    ys = []
    for t in range(length):
        y, state = selective_state_step(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D)
        ys.append(y)
    return torch.stack(ys, dim=-1), state


def selective_scan_chunked(u, delta, A, B, C, chunk_size: int = 64, D=None, initial_state=None):
    """Chunked selective scan; same contract as `selective_scan_sequential`."""
    b, d, length = u.shape
    uf, df = u.float(), delta.float()
    bf, cf, af = B.float(), C.float(), A.float()
    state = u.new_zeros(b, d, af.shape[-1], dtype=torch.float32) if initial_state is None else initial_state.float()
    outputs = []
    for start in range(0, length, chunk_size):
        sl = slice(start, min(length, start + chunk_size))
        dt, x = df[..., sl], uf[..., sl]
        bc, cc = bf[..., sl], cf[..., sl]
        log_decay = dt[:, :, None, :] * af[None, :, :, None]  # [b, d, n, q]
        cum = log_decay.cumsum(-1)
        pair = torch.exp(segsum(log_decay))  # [b, d, n, q(t), q(s)]
        drive = dt * x  # [b, d, q]
        # y_t = sum_n C_t [ sum_s pair[t, s] B_s drive_s + exp(S_t) h_0 ]
        within = torch.einsum("bdnts,bns,bds,bnt->bdt", pair, bc, drive, cc)
        carried = torch.einsum("bdnt,bdn,bnt->bdt", torch.exp(cum), state, cc)
        outputs.append(within + carried)
        to_end = torch.exp(cum[..., -1:] - cum)  # [b, d, n, q]
        state = torch.exp(cum[..., -1]) * state + torch.einsum("bdns,bns,bds->bdn", to_end, bc, drive)
    y = torch.cat(outputs, dim=-1)
    if D is not None:
        y = y + uf * D.float()[:, None]
    return y.to(u.dtype), state


def selective_state_step(state, u, delta, A, B, C, D=None):
    """One decode step: state [b, d, n]; u, delta [b, d]; B, C [b, n] -> (y [b, d], state)."""
    dtf = delta.float()
    state = torch.exp(dtf[..., None] * A.float()) * state.float() + (dtf * u.float())[..., None] * B.float()[:, None]
    y = torch.einsum("bdn,bn->bd", state, C.float())
    if D is not None:
        y = y + u.float() * D.float()
    return y.to(u.dtype), state


@functools.cache
def _cuda_kernel():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def selective_scan(u, delta, A, B, C, chunk_size: int = 64, D=None, initial_state=None):
    """mamba-ssm's CUDA kernel when installed (no initial state), else `selective_scan_chunked`."""
    if u.is_cuda and initial_state is None and _cuda_kernel() is not None:
        y, last = _cuda_kernel()(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=False,
                                 return_last_state=True)
        return y, last
    return selective_scan_chunked(u, delta, A, B, C, chunk_size, D=D, initial_state=initial_state)
