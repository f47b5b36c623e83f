"""Feed-forward blocks, optionally nested (MatFormer; see `nested_ffn.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.nested_ffn import MatFormerConfig


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020); gate/up column-parallel, down row-parallel.

    With `matformer` set, the active granularity uses only the kept rows of gate/up and columns of down.
    """

    recompute_as = "mlp"

    def __init__(self, factory: LayerFactory, hidden: int, ffn_hidden: int, std: float, out_std: float,
                 matformer: MatFormerConfig | None = None) -> None:
        super().__init__()
        self.gate = factory.column_linear(hidden, ffn_hidden, std=std)
        self.up = factory.column_linear(hidden, ffn_hidden, std=std)
        self.down = factory.row_linear(ffn_hidden, hidden, std=out_std)
        self.nesting = None if matformer is None else factory.nesting(ffn_hidden, matformer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = None if self.nesting is None else self.nesting.active(x.device)
        if keep is None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        x, n = self.nesting.enter(x), self.nesting
        hidden = F.silu(F.linear(x, n.rows(self.gate.weight, keep))) * F.linear(x, n.rows(self.up.weight, keep))
        return n.leave(F.linear(hidden, n.columns(self.down.weight, keep)))


class SquaredReLUMLP(nn.Module):
    """down(relu(up(x))^2) (So et al. 2021, Primer): the MLP of NVIDIA's Mamba-2-Hybrid and Nemotron-H."""

    recompute_as = "mlp"

    def __init__(self, factory: LayerFactory, hidden: int, ffn_hidden: int, std: float, out_std: float,
                 matformer: MatFormerConfig | None = None) -> None:
        super().__init__()
        self.up = factory.column_linear(hidden, ffn_hidden, std=std)
        self.down = factory.row_linear(ffn_hidden, hidden, std=out_std)
        self.nesting = None if matformer is None else factory.nesting(ffn_hidden, matformer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = None if self.nesting is None else self.nesting.active(x.device)
        if keep is None:
            return self.down(F.relu(self.up(x)).square())
        n = self.nesting
        hidden = F.relu(F.linear(n.enter(x), n.rows(self.up.weight, keep))).square()
        return n.leave(F.linear(hidden, n.columns(self.down.weight, keep)))
