"""Diffusion-transformer blocks for text-to-image models (DiT / PixArt-α / FiTv2).

A block: AdaLN-modulated self-attention over packed image tokens (QK-norm, 2-D RoPE, attention only
within each image), cross-attention to the image's own text tokens (PixArt-style, unmodulated),
and an AdaLN-modulated SwiGLU MLP. The modulation (shift, scale, gate for attention and MLP) is
AdaLN-LoRA (FiTv2, after W.A.L.T): one projection of the condition shared by all blocks, plus a
rank-r update per block, instead of a full 6·h × h projection in every block.
"""

from __future__ import annotations

import torch
from torch import nn

from gigatron.models.layers.attention import MaskedAttention
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import mark_init
from gigatron.models.layers.mlp import SwiGLU
from gigatron.models.layers.rotary import apply_rotary_2d


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: x·(1 + scale) + shift."""
    return x * (1 + scale) + shift


class QKNormAttention(nn.Module):
    """Multi-head attention with RMS-normalised queries and keys; heads split across TP ranks.

    Self-attention (context None) applies 2-D RoPE at the tokens' (row, column) positions.
    """

    def __init__(self, factory: LayerFactory, dim: int, heads: int, std: float, out_std: float, eps: float,
                 context_dim: int | None = None, rope_base: float | None = None) -> None:
        super().__init__()
        context_dim = context_dim or dim
        self.heads = heads // factory.tp_size
        self.head_dim = dim // heads
        self.rope_base = rope_base
        self.q = factory.column_linear(dim, dim, std=std)
        self.k = factory.column_linear(context_dim, dim, std=std)
        self.v = factory.column_linear(context_dim, dim, std=std)
        self.o = factory.row_linear(dim, dim, std=out_std)
        self.q_norm = factory.head_norm(self.head_dim, eps)
        self.k_norm = factory.head_norm(self.head_dim, eps)
        self.core = MaskedAttention()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        source = x if context is None else context
        q = self.q_norm(self._heads(self.q(x)))
        k = self.k_norm(self._heads(self.k(source)))
        v = self._heads(self.v(source))
        if positions is not None:
            q = apply_rotary_2d(q, positions, self.rope_base)
            k = apply_rotary_2d(k, positions, self.rope_base)
        out = self.core(q, k, v, mask[:, None])
        return self.o(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.heads * self.head_dim))


class AdaLNLoRA(nn.Module):
    """A block's 6 modulation vectors: shared(c) + up(down(c)), computed per image."""

    def __init__(self, factory: LayerFactory, dim: int, rank: int, std: float) -> None:
        super().__init__()
        self.down = factory.replicated_linear(dim, rank, std=std)
        self.up = factory.replicated_linear(rank, 6 * dim, std=std)
        mark_init(self.up.weight, "zeros")  # each block starts from the shared modulation

    def forward(self, condition: torch.Tensor, shared: torch.Tensor) -> list[torch.Tensor]:
        return list((shared + self.up(self.down(condition))).chunk(6, dim=-1))


class DiTBlock(nn.Module):
    """x + gate·attn(mod(norm(x))); x + cross(norm(x), text); x + gate·mlp(mod(norm(x)))."""

    recompute_as = "layer"

    def __init__(self, factory: LayerFactory, dim: int, heads: int, ffn: int, text_dim: int, lora_rank: int,
                 rope_base: float, std: float, out_std: float, eps: float) -> None:
        super().__init__()
        self.modulation = AdaLNLoRA(factory, dim, lora_rank, std)
        self.attn_norm = factory.norm(dim, eps)
        self.attn = QKNormAttention(factory, dim, heads, std, out_std, eps, rope_base=rope_base)
        self.cross_norm = factory.norm(dim, eps)
        self.cross = QKNormAttention(factory, dim, heads, std, out_std, eps, context_dim=text_dim)
        self.mlp_norm = factory.norm(dim, eps)
        self.mlp = SwiGLU(factory, dim, ffn, std=std, out_std=out_std)

    def forward(self, x: torch.Tensor, token_condition: torch.Tensor, shared: torch.Tensor,
                self_mask: torch.Tensor, positions: torch.Tensor, text: torch.Tensor,
                cross_mask: torch.Tensor) -> torch.Tensor:
        """`token_condition`/`shared`: each token's image's condition [rows, L, h] and shared modulation [rows, L, 6h]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(token_condition, shared)
        x = x + gate1 * self.attn(modulate(self.attn_norm(x), shift1, scale1), self_mask, positions=positions)
        x = x + self.cross(self.cross_norm(x), cross_mask, context=text)
        return x + gate2 * self.mlp(modulate(self.mlp_norm(x), shift2, scale2))
