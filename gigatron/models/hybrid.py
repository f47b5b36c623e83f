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

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from gigatron.config.validate import cp_head_problems, divisibility_problems
from gigatron.models.layers.attention import GroupedQueryAttention
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import scaled_std
from gigatron.models.layers.lm_ends import Embedding, Head, tie_output_to_embedding
from gigatron.models.layers.mamba1 import Mamba1Mixer, Mamba1Shape
from gigatron.models.layers.mamba2 import Mamba2Mixer, Mamba2Shape
from gigatron.models.layers.mlp import SquaredReLUMLP, SwiGLU
from gigatron.models.layers.nested_ffn import MatFormerConfig, ffn_width_problems
from gigatron.models.registry import LayerRecipe, ModelSpec

SYMBOLS = {"M": "mamba", "*": "attention", "-": "mlp"}


@dataclass
class HybridConfig:
    """Shape of a hybrid model; the Mamba fields use mamba_ssm's names and defaults."""

    family: ClassVar[str] = "hybrid"

    vocab_size: int = 2048
    hidden_size: int = 256
    num_layers: int = 8
    # An explicit pattern of M/*/- of length num_layers; None derives it from the two ratios.
    pattern: str | None = None
    attention_ratio: float = 0.08
    mlp_ratio: float = 0.5
    mixer: Literal["mamba2", "mamba1"] = "mamba2"
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64  # Mamba-2 head width
    ngroups: int = 1  # Mamba-2 B/C groups; TP needs ngroups % tp == 0
    chunk_size: int = 256
    dt_rank: int | None = None  # Mamba-1 only; None = ceil(hidden / 16)
    num_heads: int = 8
    num_kv_heads: int | None = None
    position_embedding: Literal["none", "rope"] = "none"
    rope_base: float = 10000.0
    ffn_hidden_size: int | None = None  # None = 4 * hidden
    mlp_activation: Literal["relu2", "swiglu"] = "relu2"
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = False
    # One width per MLP (`-`) layer in depth order (a Mix'n'Match model); overrides ffn_hidden_size.
    ffn_hidden_sizes: list[int] | None = None
    # Nested MLPs (MatFormer, docs/matformer.md); None trains an ordinary model.
    matformer: MatFormerConfig | None = None

    @property
    def layer_pattern(self) -> str:
        """The M/*/- symbol of every layer."""
        if self.pattern is not None:
            return self.pattern
        from megatron.core.ssm.mamba_hybrid_layer_allocation import allocate_layers

        return "".join(allocate_layers(self.num_layers, self.attention_ratio, self.mlp_ratio))

    @property
    def kv_heads(self) -> int:
        """Key/value heads of the attention layers."""
        return self.num_kv_heads or self.num_heads

    @property
    def ffn_size(self) -> int:
        """MLP inner width."""
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def ffn_sizes(self) -> list[int]:
        """The width of every MLP layer, in depth order."""
        if self.ffn_hidden_sizes is not None:
            return list(self.ffn_hidden_sizes)
        return [self.ffn_size] * self.layer_pattern.count("-")

    def mamba2_shape(self) -> Mamba2Shape:
        """Sizes of the Mamba-2 mixers."""
        return Mamba2Shape(self.hidden_size, self.d_state, self.d_conv, self.expand, self.headdim, self.ngroups,
                           self.chunk_size)

    def mamba1_shape(self) -> Mamba1Shape:
        """Sizes of the Mamba-1 mixers."""
        return Mamba1Shape(self.hidden_size, self.d_state, self.d_conv, self.expand, self.dt_rank)

    def validate(self, parallel: Any, data: Any) -> list[str]:
        """Problems with this shape on a layout; messages name the keys."""
        problems: list[str] = []
        if self.pattern is not None:
            bad = sorted(set(self.pattern) - set(SYMBOLS))
            if bad:
                problems.append(f"model.pattern has {bad}; valid symbols: M (mamba), * (attention), - (mlp)")
            if len(self.pattern) != self.num_layers:
                problems.append(f"model.pattern has {len(self.pattern)} layers but model.num_layers={self.num_layers}")
        elif not (self.attention_ratio >= 0 and self.mlp_ratio >= 0 and self.attention_ratio + self.mlp_ratio <= 1):
            problems.append(f"model.attention_ratio={self.attention_ratio} and model.mlp_ratio={self.mlp_ratio} must be "
                            ">= 0 and sum to at most 1")
        pattern_ok = not problems
        checks = [
            ("model.num_layers", self.num_layers, "parallel.pp", parallel.pp),
            ("model.vocab_size", self.vocab_size, "parallel.tp", parallel.tp),
            ("model.num_heads", self.num_heads, "parallel.tp", parallel.tp),
            ("model.num_kv_heads", self.kv_heads, "parallel.tp", parallel.tp),
            ("model.num_heads", self.num_heads, "model.num_kv_heads", self.kv_heads),
            ("model.hidden_size", self.hidden_size, "model.num_heads", self.num_heads),
        ]
        d_inner = self.expand * self.hidden_size
        if self.mixer == "mamba2":
            checks += [("model.expand*model.hidden_size", d_inner, "model.headdim", self.headdim),
                       ("model.ngroups", self.ngroups, "parallel.tp", parallel.tp),
                       ("model.expand*model.hidden_size/model.headdim (Mamba-2 heads)", d_inner // self.headdim,
                        "model.ngroups", self.ngroups)]
        else:
            checks.append(("model.expand*model.hidden_size", d_inner, "parallel.tp", parallel.tp))
        problems += divisibility_problems(checks)
        if pattern_ok:
            problems += ffn_width_problems(self.ffn_size, self.layer_pattern.count("-"), self.ffn_hidden_sizes, self.matformer, parallel.tp)
        if self.mixer == "mamba2" and d_inner % self.headdim == 0 and (d_inner // self.headdim) % parallel.tp:
            problems.append(f"Mamba-2 heads ({d_inner // self.headdim}) are not divisible by parallel.tp={parallel.tp}")
        if parallel.pp > 1 and self.tie_embeddings:
            problems.append("model.tie_embeddings=true is not supported with parallel.pp>1")
        if parallel.cp > 1:
            problems += self._cp_problems(parallel)
        return problems


    def _cp_problems(self, parallel: Any) -> list[str]:
        pattern = self.layer_pattern if self.pattern is not None or self.attention_ratio + self.mlp_ratio <= 1 else ""
        out: list[str] = []
        if "*" in pattern:
            out += cp_head_problems(parallel, self.num_heads, self.kv_heads)
        if "M" not in pattern:
            return out
        if self.mixer != "mamba2":
            return out + [f"parallel.cp={parallel.cp} with model.mixer=mamba1: context parallelism runs Mamba-2 layers "
                          "(all-to-all to head sharding around the scan); use model.mixer=mamba2"]
        heads = self.expand * self.hidden_size // self.headdim
        split = heads % parallel.tp == 0 and self.ngroups % parallel.tp == 0
        if split and ((heads // parallel.tp) % parallel.cp or (self.ngroups // parallel.tp) % parallel.cp):
            out.append(f"parallel.cp={parallel.cp}: each CP rank scans a 1/cp share of every TP rank's Mamba-2 heads "
                       f"({heads}/{parallel.tp}) and groups (model.ngroups={self.ngroups}/{parallel.tp}); both must "
                       "be divisible by parallel.cp")
        return out


@dataclass
class Mamba2Config(HybridConfig):
    """Pure Mamba-2: every layer a Mamba-2 mixer."""

    family: ClassVar[str] = "mamba2"
    attention_ratio: float = 0.0
    mlp_ratio: float = 0.0


@dataclass
class MambaConfig(HybridConfig):
    """Pure Mamba-1: every layer a selective-scan mixer."""

    family: ClassVar[str] = "mamba"
    attention_ratio: float = 0.0
    mlp_ratio: float = 0.0
    mixer: Literal["mamba2", "mamba1"] = "mamba1"
    d_state: int = 16


class _PreNormResidual(nn.Module):
    """x + mixer(norm(x)); `forward_cached` threads a generation cache through the mixer."""

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


def _spec(config_cls: type) -> ModelSpec:
    return ModelSpec(family=config_cls.family, config_cls=config_cls, layer_recipes=layer_recipes,
                     flops_per_token=flops_per_token, num_params=num_params, tie_weights=tie_weights)


SPEC = _spec(HybridConfig)
MAMBA2_SPEC = _spec(Mamba2Config)
MAMBA_SPEC = _spec(MambaConfig)
