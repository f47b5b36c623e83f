"""The `model:` section of Mamba-2-Hybrid, pure Mamba-2 and pure Mamba-1 models (families hybrid, mamba2, mamba)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from gigatron.config.validate import cp_head_problems, divisibility_problems
from gigatron.models.layers.mamba1 import Mamba1Shape
from gigatron.models.layers.mamba2 import Mamba2Shape
from gigatron.models.layers.nested_ffn import MatFormerConfig, ffn_width_problems

SYMBOLS = {"M": "mamba", "*": "attention", "-": "mlp"}


@dataclass
class HybridConfig:
    """Shape of a hybrid model; the Mamba fields use mamba_ssm's names and defaults."""

    family: ClassVar[str] = "hybrid"
    # Its blocks work on sequence shards between TP regions (parallel.sequence_parallel).
    supports_sequence_parallel: ClassVar[bool] = True
    # The model ends in a vocabulary output layer (lm_ends.Head): train.loss_chunk_tokens applies.
    has_vocab_head: ClassVar[bool] = True

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

    def validate(self, run: Any) -> list[str]:
        """Problems with this shape in the run `run` (its layout); messages name the keys."""
        parallel = run.parallel
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


def pure_mamba_problems(cfg: HybridConfig) -> list[str]:
    """A `mamba2` or `mamba` model is Mamba layers only: no attention or MLP in its pattern or ratios."""
    family = type(cfg).family
    if cfg.pattern is not None and set(cfg.pattern) - {"M"}:
        return [f"model.pattern={cfg.pattern!r}: model.family={family} has Mamba layers only (M); use "
                "model.family=hybrid for attention (*) and MLP (-) layers"]
    if cfg.pattern is None and (cfg.attention_ratio or cfg.mlp_ratio):
        return [f"model.attention_ratio={cfg.attention_ratio} and model.mlp_ratio={cfg.mlp_ratio}: "
                f"model.family={family} has Mamba layers only; set both to 0 or use model.family=hybrid"]
    return []


@dataclass
class Mamba2Config(HybridConfig):
    """Pure Mamba-2: every layer a Mamba-2 mixer."""

    family: ClassVar[str] = "mamba2"
    attention_ratio: float = 0.0
    mlp_ratio: float = 0.0

    def validate(self, run: Any) -> list[str]:
        """HybridConfig's checks, and Mamba layers only."""
        return super().validate(run) + pure_mamba_problems(self)


@dataclass
class MambaConfig(HybridConfig):
    """Pure Mamba-1: every layer a selective-scan mixer."""

    family: ClassVar[str] = "mamba"
    attention_ratio: float = 0.0
    mlp_ratio: float = 0.0
    mixer: Literal["mamba2", "mamba1"] = "mamba1"

    def validate(self, run: Any) -> list[str]:
        """HybridConfig's checks, and Mamba layers only."""
        return super().validate(run) + pure_mamba_problems(self)
    d_state: int = 16
