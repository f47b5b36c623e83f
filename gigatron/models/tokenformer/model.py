"""TokenFormer (Wang et al., "Rethinking Transformer Scaling with Tokenized Model Parameters").

Every linear projection is a Pattention over parameter tokens, so the model grows by appending
tokens (see `gigatron grow`). Per block, as in the reference code:

    x = x + Proj(Attention(Q(LN(x)), K(LN(x)), V(LN(x))))      Q, K, V, Proj: Pattention
    x = x + FFN(LN(x))                                          FFN: one Pattention, no activation

LN is a LayerNorm without parameters; rotary embeddings rotate the first `rotary_pct` of each
head's dimensions; the output head is tied to the token embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.attention import KVCache, attend_cached, check_room, new_kv_cache
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.lm_ends import Embedding, Head, tie_output_to_embedding
from gigatron.models.layers.rotary import apply_rotary, rotary_at, rotary_tables
from gigatron.models.registry import LayerRecipe, ModelSpec
from gigatron.models.tokenformer.config import TokenFormerConfig


class LayerNorm(nn.Module):
    """LayerNorm without a learned scale or bias (TokenFormer's blocks), computed in fp32."""

    recompute_as = "layernorm"

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class TokenFormerAttention(nn.Module):
    """Causal multi-head attention whose Q, K, V and output projections are Pattentions.

    Pattention outputs are complete on every TP rank, so all heads are computed on each rank; TP
    splits the parameter tokens (memory and the Pattention work), not the heads.
    """

    def __init__(self, cfg: TokenFormerConfig, factory: LayerFactory) -> None:
        super().__init__()
        h, kstd, vstd, norm = cfg.hidden_size, cfg.key_init_std, cfg.value_std, cfg.normalization
        self.q = factory.pattention(h, h, cfg.qkv_tokens, normalization=norm, scale_tokens=cfg.qkv_scale_tokens,
                                    key_std=kstd, value_std=vstd)
        self.k = factory.pattention(h, h, cfg.qkv_tokens, normalization=norm, scale_tokens=cfg.qkv_scale_tokens,
                                    key_std=kstd, value_std=vstd)
        self.v = factory.pattention(h, h, cfg.qkv_tokens, normalization=norm, scale_tokens=cfg.qkv_scale_tokens,
                                    key_std=kstd, value_std=vstd)
        self.proj = factory.pattention(h, h, cfg.proj_token_count, normalization=norm,
                                       scale_tokens=cfg.proj_scale_tokens, key_std=kstd, value_std=vstd,
                                       from_residual=False, to_residual=True)
        self.num_heads, self.head_dim, self.rotary_dim = cfg.num_heads, cfg.head_dim, cfg.rotary_dim
        self.rope_base = cfg.rope_base
        self.core = factory.attention_core()  # SDPA, or ring/Ulysses under context parallelism
        self.core.check_heads(cfg.num_heads, cfg.num_heads)

    def _rotate(self, x: torch.Tensor, start: int) -> torch.Tensor:
        if self.rotary_dim == 0:
            return x
        seq = x.shape[2]
        if self.core.cp is not None:
            cos, sin = rotary_at(self.core.positions(seq, x.device), self.rotary_dim, self.rope_base)
        else:
            cos, sin = rotary_tables(start + seq, self.rotary_dim, self.rope_base, device=x.device)
            cos, sin = cos[start:], sin[start:]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        rotated = apply_rotary(x[..., :self.rotary_dim], cos, sin)
        return torch.cat([rotated, x[..., self.rotary_dim:]], dim=-1)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = t.shape
        return t.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

    def _project(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        return self._rotate(q, start), self._rotate(k, start), v

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        batch, _, seq, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(x, 0)
        return self._output(self.core(q, k, v))

    def new_cache(self, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype) -> KVCache:
        """An empty KV cache for generation."""
        return new_kv_cache(batch, self.num_heads, max_len, self.head_dim, device, dtype)

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """New tokens attend to the cached ones and causally to each other; extends the cache."""
        q, k, v = self._project(x, check_room(cache, x.shape[1]))
        return self._output(attend_cached(q, k, v, cache))


class TokenFormerBlock(nn.Module):
    """x + attention(LN(x)), then + FFN-Pattention(LN(x))."""

    recompute_as = "layer"

    def __init__(self, cfg: TokenFormerConfig, factory: LayerFactory) -> None:
        super().__init__()
        self.attn_norm = LayerNorm(cfg.norm_eps)
        self.attn = TokenFormerAttention(cfg, factory)
        self.ffn_norm = LayerNorm(cfg.norm_eps)
        self.ffn = factory.pattention(cfg.hidden_size, cfg.hidden_size, cfg.ffn_tokens,
                                      normalization=cfg.normalization, scale_tokens=cfg.ffn_scale_tokens,
                                      key_std=cfg.key_init_std, value_std=cfg.value_std, to_residual=True)
        self.ffn.recompute_as = "mlp"  # this Pattention is the block's FFN (the others project Q, K, V, O)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))

    def new_cache(self, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype) -> KVCache:
        """Generation state: the attention's KV cache."""
        return self.attn.new_cache(batch, max_len, device, dtype)

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """`forward` for new tokens after the cached ones."""
        x = x + self.attn.forward_cached(self.attn_norm(x), cache)
        return x + self.ffn(self.ffn_norm(x))


class TokenFormerHead(Head):
    """Final LayerNorm (with scale and bias, as the authors' configs, or parameter-free like the
    blocks': model.final_norm) and the output projection (tied to the embedding)."""

    def __init__(self, cfg: TokenFormerConfig, factory: LayerFactory) -> None:
        norm = (factory.layer_norm(cfg.hidden_size, cfg.norm_eps) if cfg.final_norm == "layernorm"
                else LayerNorm(cfg.norm_eps))
        super().__init__(cfg.vocab_size, cfg.hidden_size, factory, cfg.key_init_std, cfg.norm_eps, norm=norm)


def layer_recipes(cfg: TokenFormerConfig, factory: LayerFactory) -> list[LayerRecipe]:
    """embedding, blocks, head."""
    return [(Embedding, (cfg.vocab_size, cfg.hidden_size, factory, cfg.key_init_std), {})] + [
        (TokenFormerBlock, (cfg, factory), {})
    ] * cfg.num_layers + [(TokenFormerHead, (cfg, factory), {})]


def tie_weights(cfg: TokenFormerConfig, model: nn.Sequential) -> None:
    """The head shares the embedding matrix (unless untied for pipeline parallelism)."""
    if cfg.tie_embeddings:
        tie_output_to_embedding(model)


def num_params(cfg: TokenFormerConfig) -> int:
    """Key and value tokens of every Pattention plus the embedding (and the head when untied) and
    the final norm's scale and bias (final_norm: layernorm)."""
    h = cfg.hidden_size
    per_layer = 2 * h * (3 * cfg.qkv_tokens + cfg.proj_token_count + cfg.ffn_tokens)
    final_norm = 2 * h if cfg.final_norm == "layernorm" else 0
    return cfg.num_layers * per_layer + cfg.vocab_size * h * (1 if cfg.tie_embeddings else 2) + final_norm


def flops_per_token(cfg: TokenFormerConfig, seq_len: int) -> float:
    """6 × matmul parameters (every token-parameter product and the head; the input lookup of an
    untied embedding is not a matmul) plus the attention scores, 12 · L · s · h, as for the Transformer."""
    matmul = num_params(cfg) - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size) \
        - (2 * cfg.hidden_size if cfg.final_norm == "layernorm" else 0)
    return 6.0 * matmul + 12.0 * cfg.num_layers * seq_len * cfg.hidden_size


SPEC = ModelSpec(
    family="tokenformer",
    config_cls=TokenFormerConfig,
    layer_recipes=layer_recipes,
    flops_per_token=flops_per_token,
    num_params=num_params,
    tie_weights=tie_weights,
)
