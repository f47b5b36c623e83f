"""What the layer factory hands to layers that mix tokens, for one context-parallel layout.

`AttentionCore` is called by every attention layer with this rank's q, k, v and gives the exact
causal self-attention over the whole sequence: SDPA on one rank (flash or memory-efficient kernels
where PyTorch has them), ring attention, Ulysses, or Ulysses inside groups × ring across them.
`SequenceExchange` lets a Mamba layer run its convolution and scan over the whole sequence for a
1/cp share of its channels (all-to-all from sequence to channel sharding and back, as Megatron does
for Mamba under CP), which is exact because both are per-channel along the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.blockwise_attention import memory_efficient_attention
from gigatron.models.layers.cp.comm import all_to_all
from gigatron.models.layers.cp.layout import SequenceLayout
from gigatron.models.layers.cp.ring import ring_attention
from gigatron.models.layers.cp.ulysses import check_heads, ulysses_attention
from gigatron.parallel.layout import ParallelLayout

CPAttention = Literal["ring", "ulysses", "hybrid"]


@dataclass(frozen=True)
class ContextParallel:
    """A CP group and how attention uses it. For `hybrid`, the group's ranks form `ulysses`-sized
    Ulysses groups of consecutive ranks, and ranks at the same place in those form the ring groups."""

    layout: SequenceLayout
    group: object
    attention: CPAttention = "ring"
    ulysses_group: object | None = None
    ring_group: object | None = None

    @property
    def size(self) -> int:
        """Ranks in the CP group."""
        return self.layout.size

    @classmethod
    def of_layout(cls, layout: ParallelLayout) -> ContextParallel:
        """The CP group and attention scheme of a process layout (cp > 1)."""
        return cls(SequenceLayout(layout.cp_rank, layout.cp_size, layout.cp_zigzag), layout.cp_group,
                   layout.cp_attention, layout.cp_ulysses_group, layout.cp_ring_group)


class AttentionCore(nn.Module):
    """Causal (or full) self-attention of this rank's tokens over the sequence; q [b, h, L, d], k/v [b, kv, L, d].

    A module without parameters, so that activation recomputation can name it (`core_attn`).
    """

    recompute_as = "core_attn"

    def __init__(self, cp: ContextParallel | None = None) -> None:
        super().__init__()
        self.cp = cp

    def positions(self, local_length: int, device: torch.device | str) -> torch.Tensor:
        """Global positions of this rank's `local_length` tokens (for RoPE)."""
        if self.cp is None:
            return torch.arange(local_length, device=device)
        return self.cp.layout.local_positions(local_length, device=device)

    def check_heads(self, heads: int, kv_heads: int) -> None:
        """Raise at build time if Ulysses cannot split these per-rank heads."""
        if self.cp is not None and self.cp.attention != "ring":
            degree = self.cp.size if self.cp.attention == "ulysses" else dist.get_world_size(self.cp.ulysses_group)
            check_heads(heads, kv_heads, degree)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
        if self.cp is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
        positions = self.positions(q.shape[2], q.device)
        if self.cp.attention == "ring":
            return ring_attention(q, k, v, positions, positions, self.cp.group, causal=causal)
        if self.cp.attention == "ulysses":
            return ulysses_attention(q, k, v, positions, self.cp.group, _single_device, causal=causal)
        ring_group = self.cp.ring_group

        def across_ring(q, k, v, q_pos, k_pos, causal, key_limit):
            return ring_attention(q, k, v, q_pos, k_pos, ring_group, causal=causal, key_limit=key_limit)

        return ulysses_attention(q, k, v, positions, self.cp.ulysses_group, across_ring, causal=causal)


def _single_device(q, k, v, q_pos, k_pos, causal, key_limit):
    return memory_efficient_attention(q, k, v, causal=causal, q_pos=q_pos, k_pos=k_pos, key_limit=key_limit)


class SequenceExchange:
    """All-to-all between sequence sharding ([b, L/cp, C]) and channel sharding ([b, L, C/cp], in position order)."""

    def __init__(self, cp: ContextParallel) -> None:
        self.cp = cp
        self.size, self.rank = cp.size, cp.layout.rank

    def channel_index(self, segments: list[int], device: torch.device | str | None = None,
                      rank: int | None = None) -> torch.Tensor:
        """Channels of rank `rank` (default: ours) in a tensor made of `segments`: its 1/cp of every segment."""
        rank = self.rank if rank is None else rank
        pieces, offset = [], 0
        for size in segments:
            if size % self.size:
                raise ValueError(f"a channel segment of {size} cannot be split over parallel.cp={self.size} ranks")
            share = size // self.size
            pieces.append(torch.arange(offset + rank * share, offset + (rank + 1) * share, device=device))
            offset += size
        return torch.cat(pieces)

    def _rank_order(self, local_length: int, device) -> torch.Tensor:
        layout = self.cp.layout
        return torch.cat([layout.positions(local_length * self.size, rank=r, device=device)
                          for r in range(self.size)])

    def to_channels(self, x: torch.Tensor, segments: list[int]) -> torch.Tensor:
        """[b, L/cp, C] (our tokens) -> [b, L, C/cp] (our channels of every segment, tokens in position order)."""
        grouped = torch.cat([x.index_select(-1, self.channel_index(segments, x.device, rank=r))
                             for r in range(self.size)], dim=-1)
        gathered = all_to_all(grouped, self.cp.group, scatter_dim=2, gather_dim=1)
        natural = torch.argsort(self._rank_order(x.shape[1], x.device))
        return gathered.index_select(1, natural)

    def to_sequence(self, y: torch.Tensor) -> torch.Tensor:
        """[b, L, C/cp] in position order -> [b, L/cp, C] (our tokens, channels of all ranks in rank order)."""
        order = self._rank_order(y.shape[1] // self.size, y.device)
        return all_to_all(y.index_select(1, order), self.cp.group, scatter_dim=1, gather_dim=2)

