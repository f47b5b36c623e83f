"""Feed-forward blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.factory import LayerFactory


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020); gate/up column-parallel, down row-parallel."""

    def __init__(self, factory: LayerFactory, hidden: int, ffn_hidden: int, std: float, out_std: float) -> None:
        super().__init__()
        self.gate = factory.column_linear(hidden, ffn_hidden, std=std)
        self.up = factory.column_linear(hidden, ffn_hidden, std=std)
        self.down = factory.row_linear(ffn_hidden, hidden, std=out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class SquaredReLUMLP(nn.Module):
    """down(relu(up(x))^2) (So et al. 2021, Primer): the MLP of NVIDIA's Mamba-2-Hybrid and Nemotron-H."""

    def __init__(self, factory: LayerFactory, hidden: int, ffn_hidden: int, std: float, out_std: float) -> None:
        super().__init__()
        self.up = factory.column_linear(hidden, ffn_hidden, std=std)
        self.down = factory.row_linear(ffn_hidden, hidden, std=out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())
