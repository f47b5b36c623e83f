"""The `model:` section of a Llama-style Transformer (family gpt)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gigatron.config.validate import cp_head_problems, divisibility_problems
from gigatron.models.layers.nested_ffn import MatFormerConfig, ffn_width_problems


@dataclass
class GPTConfig:
    """Shape of a Llama-style model."""

    family: ClassVar[str] = "gpt"
    # Its blocks work on sequence shards between TP regions (parallel.sequence_parallel).
    supports_sequence_parallel: ClassVar[bool] = True
    # The model ends in a vocabulary output layer (lm_ends.Head): train.loss_chunk_tokens applies.
    has_vocab_head: ClassVar[bool] = True

    vocab_size: int = 259
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    # Key/value heads for grouped-query attention; None = num_heads (multi-head attention).
    num_kv_heads: int | None = None
    ffn_hidden_size: int | None = None  # None: Llama's rounding of 8/3 * hidden to a multiple of 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = False
    # Dropout on the attention and MLP outputs before each residual add (Megatron-LM's hidden_dropout).
    # The mask is drawn from torch's generator for the whole [batch, seq, hidden] output on every TP
    # rank, so tensor-parallel replicas agree; recomputation redraws the same mask.
    hidden_dropout: float = 0.0
    # One FFN width per block (a Mix'n'Match model from `gigatron matformer extract`); overrides
    # ffn_hidden_size.
    ffn_hidden_sizes: list[int] | None = None
    # Nested FFNs (MatFormer, docs/matformer.md); None trains an ordinary model.
    matformer: MatFormerConfig | None = None

    @property
    def kv_heads(self) -> int:
        """Key/value heads actually used."""
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.hidden_size // self.num_heads

    @property
    def ffn_size(self) -> int:
        """SwiGLU inner width."""
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        return 256 * ((int(8 * self.hidden_size / 3) + 255) // 256)

    @property
    def ffn_sizes(self) -> list[int]:
        """The FFN width of every block."""
        return list(self.ffn_hidden_sizes) if self.ffn_hidden_sizes is not None else [self.ffn_size] * self.num_layers

    def validate(self, run: Any) -> list[str]:
        """Problems with this shape in the run `run` (its layout; empty when fine); messages name the keys."""
        parallel = run.parallel
        problems = divisibility_problems([
            ("model.num_heads", self.num_heads, "model.num_kv_heads", self.kv_heads),
            ("model.num_heads", self.num_heads, "parallel.tp", parallel.tp),
            ("model.num_kv_heads", self.kv_heads, "parallel.tp", parallel.tp),
            ("model.vocab_size", self.vocab_size, "parallel.tp", parallel.tp),
            ("model.num_layers", self.num_layers, "parallel.pp", parallel.pp),
        ])
        problems += ffn_width_problems(self.ffn_size, self.num_layers, self.ffn_hidden_sizes, self.matformer, parallel.tp)
        if self.hidden_size % self.num_heads:
            problems.append(f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}")
        elif self.head_dim % 2:
            problems.append(f"model.hidden_size/model.num_heads={self.head_dim} must be even for RoPE")
        if parallel.pp > 1 and self.tie_embeddings:
            problems.append("model.tie_embeddings=true is not supported with parallel.pp>1 (embedding and head "
                            "live on different stages); untie or use parallel.pp=1")
        problems += cp_head_problems(parallel, self.num_heads, self.kv_heads)
        if not 0.0 <= self.hidden_dropout < 1.0:
            problems.append(f"model.hidden_dropout={self.hidden_dropout} must be in [0, 1)")
        return problems
