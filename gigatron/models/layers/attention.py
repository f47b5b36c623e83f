"""Causal self-attention with grouped-query heads and optional RoPE, heads split across TP ranks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.rotary import apply_rotary, rotary_at, rotary_tables


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, [batch, local_kv_heads, max_len, head_dim]."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0


class MaskedAttention(nn.Module):
    """softmax(q·kᵀ/√d, masked)·v for q [b, h, Lq, d] and k, v [b, h, Lk, d]; `mask` broadcasts to
    [b, h, Lq, Lk] (True: may attend) or is None. The core attention of layers that attend with a
    mask (FIT, DiT), a module so that activation recomputation can name it (`core_attn`)."""

    recompute_as = "core_attn"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class GroupedQueryAttention(nn.Module):
    """q/k/v projections are column-parallel (each rank owns whole heads), the output row-parallel.

    With `num_kv_heads < num_heads` each kv head serves `num_heads / num_kv_heads` query heads (GQA,
    Ainslie et al. 2023). `rope=False` gives attention without position embedding, as in the
    Mamba-2-Hybrid, where the Mamba layers carry position.
    """

    def __init__(self, factory: LayerFactory, hidden: int, num_heads: int, num_kv_heads: int,
                 head_dim: int, rope_base: float, std: float, out_std: float, rope: bool = True) -> None:
        super().__init__()
        tp = factory.tp_size
        self.local_heads = num_heads // tp
        self.local_kv_heads = num_kv_heads // tp
        self.head_dim = head_dim
        self.rope_base = rope_base
        self.rope = rope
        self.q = factory.column_linear(hidden, num_heads * head_dim, std=std)
        self.k = factory.column_linear(hidden, num_kv_heads * head_dim, std=std)
        self.v = factory.column_linear(hidden, num_kv_heads * head_dim, std=std)
        self.o = factory.row_linear(num_heads * head_dim, hidden, std=out_std)
        # The token mixer comes from the factory: SDPA on one rank, exact ring/Ulysses under CP.
        self.core = factory.attention_core()
        self.core.check_heads(self.local_heads, self.local_kv_heads)
        self._rope_cache: tuple[int, torch.device, torch.Tensor, torch.Tensor] | None = None

    def _rope_tables(self, end: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            # Not cached in a compiled graph: a cache filled on the first call would make that call's
            # graph differ from every later one, and activation recomputation of the first step would
            # then save different tensors than its forward.
            return rotary_tables(end, self.head_dim, self.rope_base, device=device)
        cache = self._rope_cache
        if cache is None or cache[0] < end or cache[1] != device:
            cos, sin = rotary_tables(end, self.head_dim, self.rope_base, device=device)
            self._rope_cache = cache = (end, device, cos, sin)
        return cache[2], cache[3]

    def _project(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.q(x), self.k(x), self.v(x)
        batch, seq = q.shape[:2]  # the whole sequence, also when x holds a sequence-parallel shard of it
        q = q.view(batch, seq, self.local_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq, self.local_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, seq, self.local_kv_heads, self.head_dim).transpose(1, 2)
        if self.rope:
            if self.core.cp is not None:  # this rank's tokens are not positions 0..seq-1
                cos, sin = rotary_at(self.core.positions(seq, x.device), self.head_dim, self.rope_base)
            else:
                cos, sin = self._rope_tables(start + seq, x.device)
                cos, sin = cos[start:start + seq], sin[start:start + seq]
            q, k = apply_rotary(q, cos.to(q.dtype), sin.to(q.dtype)), apply_rotary(k, cos.to(q.dtype), sin.to(q.dtype))
        return q, k, v

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        batch, _, seq, _ = out.shape
        return self.o(out.transpose(1, 2).reshape(batch, seq, self.local_heads * self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(x, 0)
        return self._output(self.core(q, k, v))

    def new_cache(self, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype) -> KVCache:
        """An empty KV cache for generation."""
        return new_kv_cache(batch, self.local_kv_heads, max_len, self.head_dim, device, dtype)

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Attend the new tokens `x` to everything cached and to each other (causally); extends the cache."""
        q, k, v = self._project(x, check_room(cache, x.shape[1]))
        return self._output(attend_cached(q, k, v, cache, enable_gqa=self.local_kv_heads != self.local_heads))


def new_kv_cache(batch: int, heads: int, max_len: int, head_dim: int, device: torch.device | str,
                 dtype: torch.dtype) -> KVCache:
    """Zeroed keys and values for `max_len` positions."""
    shape = (batch, heads, max_len, head_dim)
    return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))


def check_room(cache: KVCache, seq: int) -> int:
    """The position the next `seq` tokens start at; raises if the cache cannot hold them."""
    if cache.length + seq > cache.k.shape[2]:
        raise ValueError(f"KV cache holds {cache.k.shape[2]} positions; {cache.length + seq} needed")
    return cache.length


def attend_cached(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache,
                  enable_gqa: bool = False) -> torch.Tensor:
    """Store the new tokens' k/v in `cache` and attend q to everything cached, causally among the new."""
    start, seq = cache.length, q.shape[2]
    cache.k[:, :, start:start + seq] = k
    cache.v[:, :, start:start + seq] = v
    cache.length = start + seq
    keys, values = cache.k[:, :, :cache.length], cache.v[:, :, :cache.length]
    allowed = torch.arange(cache.length, device=q.device)[None, :] <= (start + torch.arange(seq, device=q.device))[:, None]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, enable_gqa=enable_gqa)
