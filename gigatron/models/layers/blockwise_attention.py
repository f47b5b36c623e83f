"""Exact attention in memory linear in the sequence: online softmax over blocks, recomputed in backward.

Masks come from token positions, not from a materialised L×L matrix: a key is visible to a query
when (causal) its position is not larger, and (padding) its position is below `key_limit`. Because
positions travel with the tokens, the same code serves one device, a ring step whose keys live on
another rank, Ulysses' gathered sequence, and the zigzag split, where a rank's tokens are not
contiguous. Keys are processed in runs of consecutive positions, so whole (query block, key run)
pairs that the causal mask hides are skipped and fully visible pairs need no mask.

`accumulate_forward` folds a block into a running output and log-sum-exp (what ring attention
merges); `accumulate_backward` adds a block's gradients given the final output and log-sum-exp
(FlashAttention-2's backward). Both work in place on the caller's accumulators, so the only
temporaries are one (query run, key run) pair's results: memory stays close to one device's SDPA.
`MemoryEfficientAttention` is the single-device autograd function built from them.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake

# Scores held at once by the reference loop: batch · heads · rows · keys elements (16 MiB in fp32).
_SCORE_BUDGET = 1 << 22
# Runs of consecutive positions are cut into pieces of at most this many tokens, so that the
# per-pair outputs and gradients (the only temporaries besides the accumulators) stay small.
_MAX_RUN = 2048


def position_runs(positions: torch.Tensor, max_run: int | None = None) -> list[tuple[int, int]]:
    """[start, end) index ranges of `positions` that hold consecutive positions (at most `max_run` long)."""
    if positions.numel() == 0:
        return []
    breaks = (torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1).tolist()
    bounds = [0, *breaks, positions.numel()]
    runs = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        step = max_run or hi - lo
        runs += [(a, min(hi, a + step)) for a in range(lo, hi, step)]
    return runs


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
    # A fused kernel that returns the log-sum-exp and takes it back in its backward is exactly what
    # merging blocks needs: PyTorch's CPU flash kernel, and on CUDA its memory-efficient kernel. Each
    # is checked against the reference loop once per process, device and dtype before it is trusted.
    if not isinstance(seen, str):
        return False
    supported = ((q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16))
                 or (q.device.type == "cuda" and q.dtype in (torch.float32, torch.float16, torch.bfloat16)))
    if not supported:
        return False
    if is_fake(q) or torch.compiler.is_compiling():
        # Shapes only (the memory planner's trace, dynamo's): the path a healthy device takes. The
        # check needs real numbers and is made when real tensors first come.
        return True
    return _fused_verified(q.device, q.dtype)


def _fused_forward(q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out fp32, lse fp32 [b, h, rows]) of one pair from PyTorch's fused kernel for q's device."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out.float(), lse.float()
    heads = q.shape[1]
    out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, expand_kv(k, heads), expand_kv(v, heads), None, True, 0.0, causal, scale=scale)
    return out.float(), lse[..., :q.shape[2]].float()  # the kernel pads its rows to a multiple of 32


def _fused_backward(dout, q, k, v, out, lse, causal: bool, scale: float):
    """(dq, dk, dv) fp32 of one pair, given the rows' final output and log-sum-exp."""
    if q.device.type == "cpu":
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.to(q.dtype), q, k, v, out.to(q.dtype), lse, 0.0, causal, scale=scale)
        return tuple(g.float() for g in grads)
    heads, kv_heads, rows = q.shape[1], k.shape[1], q.shape[2]
    padded = torch.full((*lse.shape[:-1], -(-rows // 32) * 32), float("inf"), dtype=torch.float32,
                        device=lse.device)
    padded[..., :rows] = lse
    seed = torch.zeros((), dtype=torch.int64, device=q.device)
    dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        dout.to(q.dtype), q, expand_kv(k, heads), expand_kv(v, heads), None, out.to(q.dtype), padded, seed, seed,
        0.0, [True, True, True, False], causal, scale=scale)
    return dq.float(), reduce_kv(dk.float(), kv_heads), reduce_kv(dv.float(), kv_heads)


_verified: dict[tuple[str, torch.dtype], bool] = {}


def _fused_verified(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused kernel gives the reference loop's output, log-sum-exp and gradients here.

    Checked once per (device type, dtype) on a small causal and a full pair with grouped heads and a
    row count that is not a multiple of 32; a kernel that raises or disagrees is not used (with a warning).
    """
    key = (device.type, dtype)
    if key not in _verified:
        _verified[key] = False  # the reference loop, also while checking
        try:
            problem = _fused_mismatch(device, dtype)
        except Exception as exc:  # noqa: BLE001 - any failure means: use the reference loop
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            import warnings

            warnings.warn(f"blockwise attention: PyTorch's fused kernel on {device.type} {dtype} disagrees with "
                          f"the reference loop ({problem}); using the reference loop", stacklevel=2)
        _verified[key] = problem is None
    return _verified[key]


def _fused_mismatch(device: torch.device, dtype: torch.dtype) -> str | None:
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    q, k, v, dout = rand(1, 4, 40, 16), rand(1, 2, 40, 16), rand(1, 2, 40, 16), rand(1, 4, 40, 16)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for seen in ("diagonal", "all"):
        want_out, want_lse = _reference_forward(q, k, v, seen, 0.25)
        got_out, got_lse = _fused_forward(q, k, v, seen == "diagonal", 0.25)
        delta = row_delta(dout, want_out)
        want = _reference_backward(dout, delta, q, k, v, want_out, want_lse, seen, 0.25)
        got = _fused_backward(dout, q, k, v, want_out, want_lse, seen == "diagonal", 0.25)
        for name, a, b in (("out", got_out, want_out), ("lse", got_lse, want_lse),
                           *((f"d{n}", x, y) for n, x, y in zip("qkv", got, want, strict=True))):
            if a.shape != b.shape:
                return f"{seen} {name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
            err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
            if not err <= tol:
                return f"{seen} {name}: relative error {err:.2e} > {tol:g}"
    return None


def _probabilities(scores: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    # exp(s - lse) with rows that see nothing (lse = -inf) giving 0, not NaN.
    finite = torch.isfinite(lse)
    return torch.exp(scores - torch.where(finite, lse, 0.0)[..., None]) * finite[..., None]


def merge_blocks(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
    """Fold a block's (out, lse) into running (out, lse) in place (the online softmax); reuses block_out."""
    merged = torch.logaddexp(lse, block_lse)
    keep = torch.isfinite(merged)
    safe = torch.where(keep, merged, 0.0)
    out.mul_(torch.where(keep, torch.exp(lse - safe), 0.0)[..., None])
    out.add_(block_out.mul_(torch.where(keep, torch.exp(block_lse - safe), 0.0)[..., None]))
    lse.copy_(merged)


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


def _diagonal_rows(seen, r0: int, r1: int, keys: int, device) -> torch.Tensor | None:
    if isinstance(seen, str):
        return torch.ones(r1 - r0, keys, dtype=torch.bool, device=device).tril(r0) if seen == "diagonal" else None
    return seen[r0:r1]


def _pair_forward(q, k, v, seen, scale) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_flash(q, seen):
        return _fused_forward(q, k, v, seen == "diagonal", scale)
    return _reference_forward(q, k, v, seen, scale)


def _reference_forward(q, k, v, seen, scale) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, rows, _ = q.shape
    k, v = expand_kv(k, h).float(), expand_kv(v, h).float()
    out = torch.empty(b, h, rows, v.shape[-1], dtype=torch.float32, device=q.device)
    lse = torch.empty(b, h, rows, dtype=torch.float32, device=q.device)
    step = _rows_per_block(b, h, k.shape[2], rows)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        scores = (q[:, :, r0:r1].float() @ k.transpose(-1, -2)) * scale
        mask = _diagonal_rows(seen, r0, r1, k.shape[2], q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        lse[:, :, r0:r1] = torch.logsumexp(scores, dim=-1)
        out[:, :, r0:r1] = _probabilities(scores, lse[:, :, r0:r1]) @ v
    return out, lse


def _pair_backward(dout, delta, q, k, v, out, lse, seen, scale) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _use_flash(q, seen):
        return _fused_backward(dout, q, k, v, out, lse, seen == "diagonal", scale)
    return _reference_backward(dout, delta, q, k, v, out, lse, seen, scale)


def _reference_backward(dout, delta, q, k, v, out, lse, seen, scale
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, h, rows, _ = q.shape
    kv_heads = k.shape[1]
    k, v = expand_kv(k, h).float(), expand_kv(v, h).float()
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=q.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=q.device)
    step = _rows_per_block(b, h, k.shape[2], rows)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        qc, do_c = q[:, :, r0:r1].float(), dout[:, :, r0:r1].float()
        scores = (qc @ k.transpose(-1, -2)) * scale
        mask = _diagonal_rows(seen, r0, r1, k.shape[2], q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        p = _probabilities(scores, lse[:, :, r0:r1])
        dv += p.transpose(-1, -2) @ do_c
        ds = p * (do_c @ v.transpose(-1, -2) - delta[:, :, r0:r1, None])
        dq[:, :, r0:r1] = (ds @ k) * scale
        dk += (ds.transpose(-1, -2) @ qc) * scale
    return dq, reduce_kv(dk, kv_heads), reduce_kv(dv, kv_heads)


def _pairs(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, key_limit: int | None):
    """(query run, key run, visibility) for every pair that sees something."""
    for q0, q1 in position_runs(q_pos, _MAX_RUN):
        for k0, k1 in position_runs(k_pos, _MAX_RUN):
            seen = _visibility(q_pos[q0:q1], k_pos[k0:k1], causal, key_limit)
            if not (isinstance(seen, str) and seen == "none"):
                yield (q0, q1), (k0, k1), seen


def new_accumulators(q: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (out fp32, lse = -inf) for `accumulate_forward`."""
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float32, device=q.device)
    return out, torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)


def accumulate_forward(out: torch.Tensor, lse: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, scale: float,
                       key_limit: int | None = None) -> None:
    """Fold attention of contiguous q [b, h, Lq, d] over k, v [b, kv, Lk, d] into (out, lse) in place.

    Rows that see no key keep lse = -inf and out = 0 (they merge away in a ring).
    """
    for (q0, q1), (k0, k1), seen in _pairs(q_pos, k_pos, causal, key_limit):
        pair_out, pair_lse = _pair_forward(q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], seen, scale)
        merge_blocks(out[:, :, q0:q1], lse[:, :, q0:q1], pair_out, pair_lse)


def accumulate_backward(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, dout: torch.Tensor,
                        delta: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                        lse: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, scale: float,
                        key_limit: int | None = None) -> None:
    """Add one block's gradients (fp32) into dq, dk, dv, given the rows' final output, log-sum-exp and
    delta = rowsum(dout · out) (FlashAttention-2's backward)."""
    for (q0, q1), (k0, k1), seen in _pairs(q_pos, k_pos, causal, key_limit):
        dq_p, dk_p, dv_p = _pair_backward(dout[:, :, q0:q1], delta[:, :, q0:q1], q[:, :, q0:q1], k[:, :, k0:k1],
                                          v[:, :, k0:k1], out[:, :, q0:q1], lse[:, :, q0:q1], seen, scale)
        dq[:, :, q0:q1] += dq_p
        dk[:, :, k0:k1] += dk_p
        dv[:, :, k0:k1] += dv_p


def row_delta(dout: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """rowsum(dout · out) in fp32, the backward's per-row correction."""
    return (dout.float() * out.float()).sum(-1)


class MemoryEfficientAttention(torch.autograd.Function):
    """softmax(q kᵀ · scale + mask) v on one device without an L×L tensor, in forward or backward."""

    @staticmethod
    def forward(ctx, q, k, v, q_pos, k_pos, causal: bool, scale: float, key_limit: int | None):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = new_accumulators(q, v)
        accumulate_forward(out, lse, q, k, v, q_pos, k_pos, causal, scale, key_limit)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, q_pos, k_pos, out, lse)
        ctx.causal, ctx.scale, ctx.key_limit = causal, scale, key_limit
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, q_pos, k_pos, out, lse = ctx.saved_tensors
        dout = dout.contiguous()
        grads = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (q, k, v)]
        accumulate_backward(*grads, dout, row_delta(dout, out), q, k, v, out, lse, q_pos, k_pos, ctx.causal,
                            ctx.scale, ctx.key_limit)
        return (grads[0].to(q.dtype), grads[1].to(k.dtype), grads[2].to(v.dtype), None, None, None, None, None)


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
