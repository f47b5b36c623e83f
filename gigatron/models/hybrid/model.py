"""Mamba, Mamba-2 and Mamba-2-Hybrid language models (Waleffe et al. 2024, "An Empirical Study of
Mamba-based Language Models").

A model is a pattern of layer symbols, as in Megatron and Nemotron-H: `M` a Mamba mixer, `*`
self-attention (GQA; no position embedding by default, as in the paper), `-` an MLP (squared ReLU
by default). Each layer is pre-norm with a residual. The pattern comes from megatron-core's
`allocate_layers(num_layers, attention_ratio, mlp_ratio)` unless given explicitly; the paper's
8B hybrid is `allocate_layers(56, 0.08, 0.5)`. Families: `hybrid` (Mamba-2 + attention + MLP),
`mamba2` (Mamba-2 only), `mamba` (Mamba-1 only).
"""

from __future__ import annotations

import torch
from torch import nn

from gigatron.models.hf_adapter import HFAdapter
from gigatron.models.hybrid.config import HybridConfig, Mamba2Config, MambaConfig
from gigatron.models.hybrid.hf import MAMBA2, NEMOTRON_H
from gigatron.models.layers.attention import GroupedQueryAttention
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import scaled_std
from gigatron.models.layers.lm_ends import Embedding, Head, tie_output_to_embedding
from gigatron.models.layers.mamba1 import Mamba1Mixer
from gigatron.models.layers.mamba2 import Mamba2Mixer
from gigatron.models.layers.mlp import SquaredReLUMLP, SwiGLU
from gigatron.models.registry import LayerRecipe, ModelSpec


class _PreNormResidual(nn.Module):
    """x + mixer(norm(x)); `forward_cached` threads a generation cache through the mixer."""

    recompute_as = "layer"

    def __init__(self, factory: LayerFactory, cfg: HybridConfig, mixer: nn.Module) -> None:
        super().__init__()
        self.norm = factory.norm(cfg.hidden_size, cfg.norm_eps)
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))

    def new_cache(self, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype):
        """The mixer's generation state (None for MLPs)."""
        if isinstance(self.mixer, GroupedQueryAttention):
            return self.mixer.new_cache(batch, max_len, device, dtype)
        if hasattr(self.mixer, "new_cache"):
            return self.mixer.new_cache(batch, device, dtype)
        return None

    def forward_cached(self, x: torch.Tensor, cache) -> torch.Tensor:
        """`forward` for new tokens after the cached ones."""
        if cache is None:
            return self.forward(x)
        return x + self.mixer.forward_cached(self.norm(x), cache)


class MambaLayer(_PreNormResidual):
    """`M`: a Mamba-2 (or Mamba-1) mixer."""

    def __init__(self, cfg: HybridConfig, factory: LayerFactory) -> None:
        out_std = scaled_std(cfg.init_std, cfg.num_layers)
        if cfg.mixer == "mamba2":
            mixer: nn.Module = Mamba2Mixer(factory, cfg.mamba2_shape(), cfg.init_std, out_std)
        else:
            mixer = Mamba1Mixer(factory, cfg.mamba1_shape(), cfg.init_std, out_std)
        super().__init__(factory, cfg, mixer)


class AttentionLayer(_PreNormResidual):
    """`*`: grouped-query self-attention."""

    def __init__(self, cfg: HybridConfig, factory: LayerFactory) -> None:
        mixer = GroupedQueryAttention(factory, cfg.hidden_size, cfg.num_heads, cfg.kv_heads,
                                      cfg.hidden_size // cfg.num_heads, cfg.rope_base, std=cfg.init_std,
                                      out_std=scaled_std(cfg.init_std, cfg.num_layers),
                                      rope=cfg.position_embedding == "rope")
        super().__init__(factory, cfg, mixer)


class MLPLayer(_PreNormResidual):
    """`-`: squared-ReLU (or SwiGLU) MLP."""

    def __init__(self, cfg: HybridConfig, factory: LayerFactory, mlp_index: int = 0) -> None:
        cls = SquaredReLUMLP if cfg.mlp_activation == "relu2" else SwiGLU
        mixer = cls(factory, cfg.hidden_size, cfg.ffn_sizes[mlp_index], std=cfg.init_std,
                    out_std=scaled_std(cfg.init_std, cfg.num_layers), matformer=cfg.matformer)
        super().__init__(factory, cfg, mixer)


_LAYERS = {"M": MambaLayer, "*": AttentionLayer, "-": MLPLayer}


def layer_recipes(cfg: HybridConfig, factory: LayerFactory) -> list[LayerRecipe]:
    """embedding, one layer per pattern symbol, head."""
    layers: list[LayerRecipe] = [(Embedding, (cfg.vocab_size, cfg.hidden_size, factory, cfg.init_std), {})]
    pattern = cfg.layer_pattern
    for i, symbol in enumerate(pattern):
        args = (cfg, factory, pattern[:i].count("-")) if symbol == "-" else (cfg, factory)
        layers.append((_LAYERS[symbol], args, {}))
    return layers + [(Head, (cfg.vocab_size, cfg.hidden_size, factory, cfg.init_std, cfg.norm_eps), {})]


def tie_weights(cfg: HybridConfig, model: nn.Sequential) -> None:
    """Share output projection and embedding when asked to."""
    if cfg.tie_embeddings:
        tie_output_to_embedding(model)


def _mamba_params(cfg: HybridConfig) -> int:
    h, d_inner, n = cfg.hidden_size, cfg.expand * cfg.hidden_size, cfg.d_state
    if cfg.mixer == "mamba2":
        nheads, conv_dim = d_inner // cfg.headdim, d_inner + 2 * cfg.ngroups * n
        in_proj = h * (2 * d_inner + 2 * cfg.ngroups * n + nheads)
        return in_proj + conv_dim * (cfg.d_conv + 1) + 3 * nheads + d_inner + d_inner * h
    rank = cfg.mamba1_shape().rank
    return (h * 2 * d_inner + d_inner * (cfg.d_conv + 1) + d_inner * (rank + 2 * n) + rank * d_inner + d_inner
            + d_inner * n + d_inner + d_inner * h)


def _layer_params(cfg: HybridConfig, symbol: str, ffn_size: int = 0) -> int:
    h = cfg.hidden_size
    if symbol == "M":
        mixer = _mamba_params(cfg)
    elif symbol == "*":
        head_dim = h // cfg.num_heads
        mixer = 2 * h * cfg.num_heads * head_dim + 2 * h * cfg.kv_heads * head_dim
    else:
        mixer = (2 if cfg.mlp_activation == "relu2" else 3) * h * ffn_size
    return mixer + h  # + the layer's pre-norm


def num_params(cfg: HybridConfig) -> int:
    """Parameters counted from the shape."""
    embeddings = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_embeddings else 2)
    mlps = iter(cfg.ffn_sizes)
    layers = sum(_layer_params(cfg, s, next(mlps) if s == "-" else 0) for s in cfg.layer_pattern)
    return layers + embeddings + cfg.hidden_size


def ssd_flops_per_token(cfg: HybridConfig) -> float:
    """Forward FLOPs per token of one Mamba-2 SSD beyond its projections (chunked algorithm).

    Per token and head: C·B^T inside the chunk (shared per group), the masked mix with x, the chunk
    state B^T·x and the state readout C·h: 2·(g·Q·n/h + Q·p + 2·p·n) multiply-adds.
    """
    d_inner = cfg.expand * cfg.hidden_size
    nheads, q, n, p = d_inner // cfg.headdim, cfg.chunk_size, cfg.d_state, cfg.headdim
    return 2.0 * (cfg.ngroups * q * n + nheads * q * p + 2 * nheads * p * n)


def flops_per_token(cfg: HybridConfig, seq_len: int) -> float:
    """6 · matmul params + attention scores (12·h·s per attention layer) + 3 · the SSD's own FLOPs."""
    pattern = cfg.layer_pattern
    matmul = num_params(cfg) - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size)
    attention = 12.0 * pattern.count("*") * cfg.hidden_size * seq_len
    scan = 3.0 * pattern.count("M") * ssd_flops_per_token(cfg) if cfg.mixer == "mamba2" else 0.0
    return 6.0 * matmul + attention + scan


def _spec(config_cls: type, hf_adapter: HFAdapter | None) -> ModelSpec:
    return ModelSpec(family=config_cls.family, config_cls=config_cls, layer_recipes=layer_recipes,
                     flops_per_token=flops_per_token, num_params=num_params, tie_weights=tie_weights,
                     hf_adapter=hf_adapter)


SPEC = _spec(HybridConfig, NEMOTRON_H)
MAMBA2_SPEC = _spec(Mamba2Config, MAMBA2)
MAMBA_SPEC = _spec(MambaConfig, None)  # transformers' MambaForCausalLM: not mapped yet
