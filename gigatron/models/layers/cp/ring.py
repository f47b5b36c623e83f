"""Ring attention (Liu et al. 2023; zigzag balancing as in ring-flash-attention): exact attention of
this rank's queries over the keys and values of every rank in the group.

K/V blocks (with their positions) travel once around the ring, chunk by chunk: as soon as a chunk
of keys has met all of this rank's queries it is sent on, and the next chunk is computed while it
travels, so communication overlaps computation and a rank holds one foreign block plus one chunk
in flight (near a single device's memory per token). Partial outputs merge through their
log-sum-exp. The backward recomputes each block's scores from the final output and log-sum-exp
(FlashAttention-2) and sends dK/dV around the ring with their K/V, so after a full turn every rank
holds the complete gradient of its own keys and values.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gigatron.models.layers.blockwise_attention import (
    accumulate_backward,
    accumulate_forward,
    new_accumulators,
    row_delta,
)
from gigatron.models.layers.cp.comm import RingExchange

# Tokens per transfer chunk: K/V (and dK/dV) move on chunk by chunk as soon as they have been
# used, into a working buffer, so a rank holds one foreign block plus one chunk in flight.
_CHUNK = 2048


def _chunks(length: int) -> list[tuple[int, int]]:
    return [(a, min(length, a + _CHUNK)) for a in range(0, length, _CHUNK)]


class _ChunkExchange:
    """Send slices of working buffers on and receive the previous rank's into them, one chunk in flight."""

    def __init__(self, ring: RingExchange) -> None:
        self.ring, self.inflight = ring, None

    def send(self, buffers: list[torch.Tensor], a: int, b: int) -> None:
        """Start passing buffers[..., a:b, :] on; the previous chunk completes meanwhile."""
        received, handle = self.ring.start([buf[:, :, a:b] for buf in buffers])
        self.finish()
        self.inflight = (buffers, a, b, received, handle)

    def finish(self) -> None:
        """Complete the chunk in flight: its slices now hold the previous rank's data."""
        if self.inflight is None:
            return
        buffers, a, b, received, handle = self.inflight
        self.ring.finish(handle)
        for buf, piece in zip(buffers, received, strict=True):
            buf[:, :, a:b].copy_(piece)
        self.inflight = None


def _ring_steps(ring: RingExchange, world: int, positions: torch.Tensor):
    """Yield (last step?, a chunk exchange, the positions of the block held) for each of `world` steps;
    the block's positions move on alongside its chunks."""
    for step in range(world):
        last = step == world - 1
        exchange = _ChunkExchange(ring)
        next_positions = None if last else ring.start([positions])
        yield last, exchange, positions
        exchange.finish()
        if next_positions is not None:
            ring.finish(next_positions[1])
            positions = next_positions[0][0]


class RingAttention(torch.autograd.Function):
    """q [b, h, Lq, d], k/v [b, kv, Lk, d] and positions local to this rank; returns the local output."""

    @staticmethod
    def forward(ctx, q, k, v, q_pos, k_pos, causal: bool, scale: float, key_limit: int | None, group):
        ring, world = RingExchange(group), dist.get_world_size(group)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = new_accumulators(q, v)
        work = [k.clone(), v.clone()]  # the block being used; rotates in place
        chunks = _chunks(k.shape[2])
        for last, exchange, positions in _ring_steps(ring, world, k_pos.contiguous()):
            for a, b in chunks:
                accumulate_forward(out, lse, q, work[0][:, :, a:b], work[1][:, :, a:b], q_pos, positions[a:b], causal,
                                   scale, key_limit)
                if not last:
                    exchange.send(work, a, b)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, q_pos, k_pos, out, lse)
        ctx.causal, ctx.scale, ctx.key_limit, ctx.group = causal, scale, key_limit, group
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, q_pos, k_pos, out, lse = ctx.saved_tensors
        ring, world = RingExchange(ctx.group), dist.get_world_size(ctx.group)
        dout = dout.contiguous()
        delta = row_delta(dout, out)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        work = [k.clone(), v.clone()]
        grads = [torch.zeros(k.shape, dtype=torch.float32, device=q.device),
                 torch.zeros(v.shape, dtype=torch.float32, device=q.device)]
        chunks = _chunks(k.shape[2])
        for last, exchange, positions in _ring_steps(ring, world, k_pos.contiguous()):
            for a, b in chunks:
                # Key-chunk outer loop: once a chunk has met every query its dK/dV are complete for
                # this rank and travel on with it (the last step sends them home to their owner).
                accumulate_backward(dq, grads[0][:, :, a:b], grads[1][:, :, a:b], dout, delta, q, work[0][:, :, a:b],
                                    work[1][:, :, a:b], out, lse, q_pos, positions[a:b], ctx.causal, ctx.scale,
                                    ctx.key_limit)
                exchange.send(grads if last else [*work, *grads], a, b)
        return dq.to(q.dtype), grads[0].to(k.dtype), grads[1].to(v.dtype), None, None, None, None, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                   group, *, causal: bool = True, key_limit: int | None = None, scale: float | None = None
                   ) -> torch.Tensor:
    """Exact attention over the whole group's keys; see the module docstring."""
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return RingAttention.apply(q, k, v, q_pos, k_pos, causal, scale, key_limit, group)
