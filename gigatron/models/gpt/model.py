"""Llama-style Transformer: the Transformer baseline of the Mamba study.

RMSNorm pre-norm blocks, RoPE, grouped-query attention, SwiGLU MLP; input and output embeddings
untied by default (`tie_embeddings`). The model is a flat layer list:
embedding, num_layers blocks, head (final norm + output projection).
"""

from __future__ import annotations

import torch
from torch import nn

from gigatron.models.gpt.config import GPTConfig
from gigatron.models.gpt.hf import ADAPTER
from gigatron.models.layers.attention import GroupedQueryAttention, KVCache
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import scaled_std
from gigatron.models.layers.lm_ends import Embedding, Head, tie_output_to_embedding
from gigatron.models.layers.mlp import SwiGLU
from gigatron.models.registry import LayerRecipe, ModelSpec


class Block(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(x))."""

    recompute_as = "layer"

    def __init__(self, cfg: GPTConfig, factory: LayerFactory, index: int = 0) -> None:
        super().__init__()
        out_std = scaled_std(cfg.init_std, cfg.num_layers)
        self.attn_norm = factory.norm(cfg.hidden_size, cfg.norm_eps)
        self.attn = GroupedQueryAttention(factory, cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.head_dim,
                                          cfg.rope_base, std=cfg.init_std, out_std=out_std)
        self.mlp_norm = factory.norm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = SwiGLU(factory, cfg.hidden_size, cfg.ffn_sizes[index], std=cfg.init_std, out_std=out_std,
                          matformer=cfg.matformer)
        self.dropout = factory.dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x)))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))

    def new_cache(self, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype) -> KVCache:
        """Generation state: the attention's KV cache."""
        return self.attn.new_cache(batch, max_len, device, dtype)

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """`forward` for new tokens after the cached ones."""
        x = x + self.attn.forward_cached(self.attn_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))


def layer_recipes(cfg: GPTConfig, factory: LayerFactory) -> list[LayerRecipe]:
    """embedding, blocks, head."""
    return [(Embedding, (cfg.vocab_size, cfg.hidden_size, factory, cfg.init_std), {})] + [
        (Block, (cfg, factory, i), {}) for i in range(cfg.num_layers)
    ] + [(Head, (cfg.vocab_size, cfg.hidden_size, factory, cfg.init_std, cfg.norm_eps), {})]


def tie_weights(cfg: GPTConfig, model: nn.Sequential) -> None:
    """Share the output projection with the token embedding when asked to."""
    if cfg.tie_embeddings:
        tie_output_to_embedding(model)


def num_params(cfg: GPTConfig) -> int:
    """Parameters counted from the shape (untied head counted separately)."""
    h, hd = cfg.hidden_size, cfg.head_dim
    attn = h * cfg.num_heads * hd + 2 * h * cfg.kv_heads * hd + cfg.num_heads * hd * h
    mlp = 3 * h * sum(cfg.ffn_sizes)
    per_layer = attn + 2 * h
    embeddings = cfg.vocab_size * h * (1 if cfg.tie_embeddings else 2)
    return cfg.num_layers * per_layer + mlp + embeddings + h


def flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """6 * matmul params + 12 * L * h * s for attention scores (PaLM appendix B; torchtitan's count).

    The input embedding is a lookup, not a matmul, so it is left out unless tied to the head.
    The attention term counts the full score matrix, as PaLM and torchtitan do, so MFU figures
    compare with theirs.
    """
    matmul_params = num_params(cfg) - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size)
    return 6.0 * matmul_params + 12.0 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim


SPEC = ModelSpec(
    family="gpt",
    config_cls=GPTConfig,
    layer_recipes=layer_recipes,
    flops_per_token=flops_per_token,
    num_params=num_params,
    tie_weights=tie_weights,
    hf_adapter=ADAPTER,
)
