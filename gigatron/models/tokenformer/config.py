"""The `model:` section of a TokenFormer (family tokenformer)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from gigatron.config.validate import cp_head_problems, divisibility_problems
from gigatron.models.layers.pattention import NORMALIZATIONS


@dataclass
class TokenFormerConfig:
    """Shape of a TokenFormer; token counts are per Pattention layer."""

    family: ClassVar[str] = "tokenformer"
    # Its blocks work on sequence shards between TP regions (parallel.sequence_parallel).
    supports_sequence_parallel: ClassVar[bool] = True
    # The model ends in a vocabulary output layer (lm_ends.Head): train.loss_chunk_tokens applies.
    has_vocab_head: ClassVar[bool] = True

    vocab_size: int = 2048
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    qkv_tokens: int = 256  # each of Q, K, V
    proj_tokens: int | None = None  # attention output projection; None = qkv_tokens
    ffn_tokens: int = 1024
    # The s in Θ's √s (None = the layer's token count). Growth with --init preserve keeps these at
    # their pre-growth values so that the grown model computes the same function.
    qkv_scale_tokens: int | None = None
    proj_scale_tokens: int | None = None
    ffn_scale_tokens: int | None = None
    normalization: Literal["l2_norm_gelu", "gelu_l2_norm", "softmax_n"] = "l2_norm_gelu"
    rotary_pct: float = 0.25
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    key_init_std: float = 0.02
    value_init_std: float | None = None  # None = 2 / (num_layers * sqrt(hidden)), as the paper
    tie_embeddings: bool = True  # the paper's choice; untie to use pipeline parallelism
    # The norm before the output layer. The blocks' norms have no parameters; the authors' paper
    # configs give the final one a scale and bias ("final_norm": "layernorm"), as configs/tokenformer's
    # paper sizes do. layernorm_nonparam (the default, and the authors' code default) keeps it like the blocks'.
    final_norm: Literal["layernorm_nonparam", "layernorm"] = "layernorm_nonparam"

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @property
    def proj_token_count(self) -> int:
        """Parameter tokens of the attention output projection."""
        return self.proj_tokens or self.qkv_tokens

    @property
    def value_std(self) -> float:
        """Std of value tokens."""
        if self.value_init_std is not None:
            return self.value_init_std
        return 2.0 / (self.num_layers * math.sqrt(self.hidden_size))

    @property
    def rotary_dim(self) -> int:
        """Rotated dimensions per head (even)."""
        return int(self.head_dim * self.rotary_pct) // 2 * 2

    def validate(self, run: Any) -> list[str]:
        """Problems with this shape for the layout, each naming its key."""
        parallel = run.parallel
        problems = divisibility_problems([
            ("model.hidden_size", self.hidden_size, "model.num_heads", self.num_heads),
            ("model.qkv_tokens", self.qkv_tokens, "parallel.tp", parallel.tp),
            ("model.proj_tokens", self.proj_token_count, "parallel.tp", parallel.tp),
            ("model.ffn_tokens", self.ffn_tokens, "parallel.tp", parallel.tp),
            ("model.vocab_size", self.vocab_size, "parallel.tp", parallel.tp),
        ])
        if self.normalization not in NORMALIZATIONS:
            problems.append(f"model.normalization={self.normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
        if not 0.0 <= self.rotary_pct <= 1.0:
            problems.append(f"model.rotary_pct={self.rotary_pct} must be in [0, 1]")
        for key in ("qkv_scale_tokens", "proj_scale_tokens", "ffn_scale_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                problems.append(f"model.{key}={value} must be >= 1 (or null for the token count)")
        if parallel.pp > 1 and self.tie_embeddings:
            problems.append("model.tie_embeddings=true is not supported with parallel.pp>1 (the tied matrices "
                            "would live on different stages); set model.tie_embeddings=false or parallel.pp=1")
        problems += cp_head_problems(parallel, self.num_heads, self.num_heads, tp_splits_heads=False)
        return problems
