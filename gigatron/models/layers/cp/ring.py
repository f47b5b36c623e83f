"""Ring attention (Liu et al. 2023; zigzag balancing as in ring-flash-attention): exact attention of
this rank's queries over the keys and values of every rank in the group.

K/V blocks (with their positions) travel once around the ring; each step's exchange is started
before the step's block is computed, so communication overlaps computation. Partial outputs merge
through their log-sum-exp. The backward recomputes each block's scores from the final output and
log-sum-exp (FlashAttention-2) and sends dK/dV around the ring with their K/V, so after a full
turn every rank holds the complete gradient of its own keys and values.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gigatron.models.layers.blockwise_attention import (
    block_backward,
    block_forward,
    expand_kv,
    merge_blocks,
    reduce_kv,
)
from gigatron.models.layers.cp.comm import RingExchange


class RingAttention(torch.autograd.Function):
    """q [b, h, Lq, d], k/v [b, kv, Lk, d] and positions local to this rank; returns the local output."""

    @staticmethod
    def forward(ctx, q, k, v, q_pos, k_pos, causal: bool, scale: float, key_limit: int | None, group):
        ring, heads = RingExchange(group), q.shape[1]
        world = dist.get_world_size(group)
        out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        current = [k.contiguous(), v.contiguous(), k_pos.contiguous()]
        for step in range(world):
            pending = ring.start(current) if step < world - 1 else None
            block_out, block_lse = block_forward(q, expand_kv(current[0], heads), expand_kv(current[1], heads), q_pos,
                                                 current[2], causal, scale, key_limit)
            merge_blocks(out, lse, block_out, block_lse)
            if pending is not None:
                ring.finish(pending[1])
                current = pending[0]
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, q_pos, k_pos, out, lse)
        ctx.causal, ctx.scale, ctx.key_limit, ctx.group = causal, scale, key_limit, group
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, q_pos, k_pos, out, lse = ctx.saved_tensors
        ring, heads, kv_heads = RingExchange(ctx.group), q.shape[1], k.shape[1]
        world = dist.get_world_size(ctx.group)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        current = [k.contiguous(), v.contiguous(), k_pos.contiguous()]
        grads = [torch.zeros(k.shape, dtype=torch.float32, device=q.device),
                 torch.zeros(v.shape, dtype=torch.float32, device=q.device)]
        for step in range(world):
            # K/V move on while this block computes; their gradients can only follow once computed.
            pending = ring.start(current) if step < world - 1 else None
            dq_b, dk_b, dv_b = block_backward(dout, out, q, expand_kv(current[0], heads),
                                              expand_kv(current[1], heads), lse, q_pos, current[2], ctx.causal,
                                              ctx.scale, ctx.key_limit)
            dq += dq_b
            grads[0] += reduce_kv(dk_b, kv_heads)
            grads[1] += reduce_kv(dv_b, kv_heads)
            moved, requests = ring.start(grads)
            ring.finish(requests)
            grads = moved
            if pending is not None:
                ring.finish(pending[1])
                current = pending[0]
        return dq.to(q.dtype), grads[0].to(k.dtype), grads[1].to(v.dtype), None, None, None, None, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                   group, *, causal: bool = True, key_limit: int | None = None, scale: float | None = None
                   ) -> torch.Tensor:
    """Exact attention over the whole group's keys; see the module docstring."""
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return RingAttention.apply(q, k, v, q_pos, k_pos, causal, scale, key_limit, group)
