"""Causal self-attention with grouped-query heads and RoPE, heads split across TP ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.rotary import apply_rotary, rotary_tables


class GroupedQueryAttention(nn.Module):
    """q/k/v projections are column-parallel (each rank owns whole heads), the output row-parallel.

    With `num_kv_heads < num_heads` each kv head serves `num_heads / num_kv_heads` query heads (GQA,
    Ainslie et al. 2023); `num_kv_heads == num_heads` is plain multi-head attention.
    """

    def __init__(self, factory: LayerFactory, hidden: int, num_heads: int, num_kv_heads: int,
                 head_dim: int, rope_base: float, std: float, out_std: float) -> None:
        super().__init__()
        tp = factory.tp_size
        self.local_heads = num_heads // tp
        self.local_kv_heads = num_kv_heads // tp
        self.head_dim = head_dim
        self.rope_base = rope_base
        self.q = factory.column_linear(hidden, num_heads * head_dim, std=std)
        self.k = factory.column_linear(hidden, num_kv_heads * head_dim, std=std)
        self.v = factory.column_linear(hidden, num_kv_heads * head_dim, std=std)
        self.o = factory.row_linear(num_heads * head_dim, hidden, std=out_std)
        self._rope_cache: tuple[int, torch.device, torch.Tensor, torch.Tensor] | None = None

    def _rope(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._rope_cache
        if cache is None or cache[0] < seq_len or cache[1] != device:
            cos, sin = rotary_tables(seq_len, self.head_dim, self.rope_base, device=device)
            self._rope_cache = cache = (seq_len, device, cos, sin)
        return cache[2][:seq_len], cache[3][:seq_len]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, self.local_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, seq, self.local_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(batch, seq, self.local_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self._rope(seq, x.device)
        q, k = apply_rotary(q, cos.to(q.dtype), sin.to(q.dtype)), apply_rotary(k, cos.to(k.dtype), sin.to(k.dtype))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             enable_gqa=self.local_kv_heads != self.local_heads)
        return self.o(out.transpose(1, 2).reshape(batch, seq, self.local_heads * self.head_dim))
