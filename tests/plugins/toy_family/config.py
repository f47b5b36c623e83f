"""The `model:` section of the toy family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gigatron.config.validate import divisibility_problems


@dataclass
class ToyConfig:
    """Shape of a toy language model."""

    family: ClassVar[str] = "toy"  # the name in `model.family` and in saved configs

    vocab_size: int = 2048
    hidden_size: int = 64
    num_layers: int = 2
    ffn_hidden_size: int = 256
    init_std: float = 0.02

    def validate(self, run: Any) -> list[str]:
        """Problems with this shape in the run (its layout: run.parallel; empty when fine); called before
        any process starts."""
        parallel = run.parallel
        return divisibility_problems([
            ("model.num_layers", self.num_layers, "parallel.pp", parallel.pp),
            ("model.vocab_size", self.vocab_size, "parallel.tp", parallel.tp),
            ("model.ffn_hidden_size", self.ffn_hidden_size, "parallel.tp", parallel.tp),
        ])
