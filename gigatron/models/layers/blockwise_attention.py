"""Exact attention in memory linear in the sequence: online softmax over blocks, recomputed in backward.

Masks come from token positions, not from a materialised L×L matrix: a key is visible to a query
when (causal) its position is not larger, and (padding) its position is below `key_limit`. Because
positions travel with the tokens, the same code serves one device, a ring step whose keys live on
another rank, Ulysses' gathered sequence, and the zigzag split, where a rank's tokens are not
contiguous. Keys are processed in runs of consecutive positions, so whole (query block, key run)
pairs that the causal mask hides are skipped and fully visible pairs need no mask.

`block_forward` returns the block's output and log-sum-exp (what ring attention merges);
`block_backward` is FlashAttention-2's backward given the final output and log-sum-exp.
`MemoryEfficientAttention` is the single-device autograd function built from them.
"""

from __future__ import annotations

import torch

# Scores held at once by the reference loop: batch · heads · rows · keys elements (16 MiB in fp32).
_SCORE_BUDGET = 1 << 22


def position_runs(positions: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) index ranges of `positions` that hold consecutive positions."""
    if positions.numel() == 0:
        return []
    breaks = (torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1).tolist()
    bounds = [0, *breaks, positions.numel()]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _rows_per_block(batch: int, heads: int, keys: int, rows: int) -> int:
    return max(1, min(rows, _SCORE_BUDGET // max(1, batch * heads * keys)))


def _visibility(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, key_limit: int | None
                ) -> str | torch.Tensor:
    """For one (query run, key run): 'none', 'all', 'diagonal' (the same positions, causal), or a bool mask."""
    q_lo, q_hi, k_lo, k_hi = int(q_pos[0]), int(q_pos[-1]), int(k_pos[0]), int(k_pos[-1])
    if key_limit is not None and k_lo >= key_limit:
        return "none"
    if causal and k_lo > q_hi:
        return "none"
    inside = key_limit is None or k_hi < key_limit
    if inside and (not causal or k_hi <= q_lo):
        return "all"
    if inside and causal and (q_lo, q_hi) == (k_lo, k_hi):
        return "diagonal"
    allowed = torch.ones(q_pos.numel(), k_pos.numel(), dtype=torch.bool, device=q_pos.device)
    if causal:
        allowed &= k_pos[None, :] <= q_pos[:, None]
    if key_limit is not None:
        allowed &= (k_pos < key_limit)[None, :]
    return allowed


def _use_flash(q: torch.Tensor, seen) -> bool:
    # PyTorch's CPU flash kernel returns the log-sum-exp and takes it back in its backward, which
    # is exactly what merging blocks needs; other devices use the reference loop below.
    return isinstance(seen, str) and q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16)


def _probabilities(scores: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    # exp(s - lse) with rows that see nothing (lse = -inf) giving 0, not NaN.
    finite = torch.isfinite(lse)
    return torch.exp(scores - torch.where(finite, lse, 0.0)[..., None]) * finite[..., None]


def merge_blocks(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
    """Fold a block's (out, lse) into running (out, lse) in place: the online softmax."""
    merged = torch.logaddexp(lse, block_lse)
    keep = torch.isfinite(merged)
    safe = torch.where(keep, merged, 0.0)
    old_w = torch.where(keep, torch.exp(lse - safe), 0.0)
    new_w = torch.where(keep, torch.exp(block_lse - safe), 0.0)
    out.mul_(old_w[..., None]).add_(block_out * new_w[..., None])
    lse.copy_(merged)


def _pair_forward(q, k, v, seen, scale) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_flash(q, seen):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.contiguous(), k.contiguous(), v.contiguous(), 0.0, seen == "diagonal", scale=scale)
        return out.float(), lse.float()
    b, h, rows, _ = q.shape
    out = torch.empty(b, h, rows, v.shape[-1], dtype=torch.float32, device=q.device)
    lse = torch.empty(b, h, rows, dtype=torch.float32, device=q.device)
    step = _rows_per_block(b, h, k.shape[2], rows)
    kf, vf = k.float(), v.float()
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        scores = (q[:, :, r0:r1].float() @ kf.transpose(-1, -2)) * scale
        if isinstance(seen, str) and seen == "diagonal":
            seen_rows = torch.ones(r1 - r0, k.shape[2], dtype=torch.bool, device=q.device).tril(r0)
        else:
            seen_rows = None if isinstance(seen, str) else seen[r0:r1]
        if seen_rows is not None:
            scores = scores.masked_fill(~seen_rows, float("-inf"))
        lse[:, :, r0:r1] = torch.logsumexp(scores, dim=-1)
        out[:, :, r0:r1] = _probabilities(scores, lse[:, :, r0:r1]) @ vf
    return out, lse


def _pair_backward(dout, delta, q, k, v, out, lse, seen, scale) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _use_flash(q, seen):
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.contiguous().to(q.dtype), q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous().to(q.dtype),
            lse.contiguous(), 0.0, seen == "diagonal", scale=scale)
        return tuple(g.float() for g in grads)
    b, h, rows, _ = q.shape
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=q.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=q.device)
    step = _rows_per_block(b, h, k.shape[2], rows)
    kf, vf = k.float(), v.float()
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        qc, do_c = q[:, :, r0:r1].float(), dout[:, :, r0:r1].float()
        scores = (qc @ kf.transpose(-1, -2)) * scale
        if isinstance(seen, str) and seen == "diagonal":
            seen_rows = torch.ones(r1 - r0, k.shape[2], dtype=torch.bool, device=q.device).tril(r0)
        else:
            seen_rows = None if isinstance(seen, str) else seen[r0:r1]
        if seen_rows is not None:
            scores = scores.masked_fill(~seen_rows, float("-inf"))
        p = _probabilities(scores, lse[:, :, r0:r1])
        dv += p.transpose(-1, -2) @ do_c
        ds = p * (do_c @ vf.transpose(-1, -2) - delta[:, :, r0:r1, None])
        dq[:, :, r0:r1] = (ds @ kf) * scale
        dk += (ds.transpose(-1, -2) @ qc) * scale
    return dq, dk, dv


def _pairs(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, key_limit: int | None):
    """(query run, key run, visibility) for every pair that sees something."""
    for q0, q1 in position_runs(q_pos):
        for k0, k1 in position_runs(k_pos):
            seen = _visibility(q_pos[q0:q1], k_pos[k0:k1], causal, key_limit)
            if not (isinstance(seen, str) and seen == "none"):
                yield (q0, q1), (k0, k1), seen


def block_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                  causal: bool, scale: float, key_limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [b, h, Lq, d] over k, v [b, h, Lk, d] (same heads): (out fp32, lse fp32 [b, h, Lq]).

    Rows that see no key get out = 0 and lse = -inf (they merge away in a ring).
    """
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
    for (q0, q1), (k0, k1), seen in _pairs(q_pos, k_pos, causal, key_limit):
        pair_out, pair_lse = _pair_forward(q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], seen, scale)
        merge_blocks(out[:, :, q0:q1], lse[:, :, q0:q1], pair_out, pair_lse)
    return out, lse


def block_backward(dout: torch.Tensor, out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   lse: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, scale: float,
                   key_limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (fp32) of q, k, v for one block, given the final output and log-sum-exp of the rows."""
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=q.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=q.device)
    delta = (dout.float() * out.float()).sum(-1)
    for (q0, q1), (k0, k1), seen in _pairs(q_pos, k_pos, causal, key_limit):
        dq_p, dk_p, dv_p = _pair_backward(dout[:, :, q0:q1], delta[:, :, q0:q1], q[:, :, q0:q1], k[:, :, k0:k1],
                                          v[:, :, k0:k1], out[:, :, q0:q1], lse[:, :, q0:q1], seen, scale)
        dq[:, :, q0:q1] += dq_p
        dk[:, :, k0:k1] += dk_p
        dv[:, :, k0:k1] += dv_p
    return dq, dk, dv


def expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Repeat grouped key/value heads [b, kv, L, d] to the query heads (GQA)."""
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def reduce_kv(grad: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Sum the gradient of repeated heads back onto their key/value head (inverse of expand_kv)."""
    b, h, length, d = grad.shape
    if h == kv_heads:
        return grad
    return grad.view(b, kv_heads, h // kv_heads, length, d).sum(dim=2)


class MemoryEfficientAttention(torch.autograd.Function):
    """softmax(q kᵀ · scale + mask) v on one device without an L×L tensor, in forward or backward."""

    @staticmethod
    def forward(ctx, q, k, v, q_pos, k_pos, causal: bool, scale: float, key_limit: int | None):
        heads = q.shape[1]
        out, lse = block_forward(q, expand_kv(k, heads), expand_kv(v, heads), q_pos, k_pos, causal, scale, key_limit)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, q_pos, k_pos, out, lse)
        ctx.causal, ctx.scale, ctx.key_limit = causal, scale, key_limit
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, q_pos, k_pos, out, lse = ctx.saved_tensors
        heads, kv_heads = q.shape[1], k.shape[1]
        dq, dk, dv = block_backward(dout, out, q, expand_kv(k, heads), expand_kv(v, heads), lse, q_pos, k_pos,
                                    ctx.causal, ctx.scale, ctx.key_limit)
        return (dq.to(q.dtype), reduce_kv(dk, kv_heads).to(k.dtype), reduce_kv(dv, kv_heads).to(v.dtype),
                None, None, None, None, None)


def memory_efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                               q_pos: torch.Tensor | None = None, k_pos: torch.Tensor | None = None,
                               key_limit: int | None = None, scale: float | None = None) -> torch.Tensor:
    """Exact attention of q [b, h, Lq, d] over k, v [b, kv_heads, Lk, d] by positions (default 0..L-1)."""
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")
    q_pos = torch.arange(q.shape[2], device=q.device) if q_pos is None else q_pos
    k_pos = torch.arange(k.shape[2], device=q.device) if k_pos is None else k_pos
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return MemoryEfficientAttention.apply(q, k, v, q_pos, k_pos, causal, scale, key_limit)
