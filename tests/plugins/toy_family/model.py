"""The toy model as a flat list of layers: embedding, blocks, head.

Every linear comes from the layer factory, so tensor parallelism, layout-independent init and
checkpoint conversion work without a line of parallel code here; the flat list is what pipeline
stages cut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import scaled_std
from gigatron.models.layers.lm_ends import Embedding, Head
from gigatron.models.layers.mlp import SquaredReLUMLP
from gigatron.models.registry import LayerRecipe, ModelSpec
from toy_family.config import ToyConfig


class ShiftBlock(nn.Module):
    """x + mlp(norm(x) + shift(norm(x))): each position sees itself and the one before it."""

    recompute_as = "layer"  # what train.recompute: full recomputes

    def __init__(self, cfg: ToyConfig, factory: LayerFactory) -> None:
        super().__init__()
        self.norm = factory.norm(cfg.hidden_size)
        self.mlp = SquaredReLUMLP(factory, cfg.hidden_size, cfg.ffn_hidden_size, std=cfg.init_std,
                                  out_std=scaled_std(cfg.init_std, cfg.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        previous = F.pad(y, (0, 0, 1, 0))[:, :-1]  # [batch, seq, hidden], shifted one position right
        return x + self.mlp(y + previous)


def layer_recipes(cfg: ToyConfig, factory: LayerFactory) -> list[LayerRecipe]:
    """(class, args, kwargs) of every layer, in order."""
    return [(Embedding, (cfg.vocab_size, cfg.hidden_size, factory, cfg.init_std), {}),
            *[(ShiftBlock, (cfg, factory), {}) for _ in range(cfg.num_layers)],
            (Head, (cfg.vocab_size, cfg.hidden_size, factory, cfg.init_std, 1e-5), {})]


def num_params(cfg: ToyConfig) -> int:
    """Parameters counted from the shape."""
    h = cfg.hidden_size
    block = h + 2 * h * cfg.ffn_hidden_size  # norm, up, down
    return 2 * cfg.vocab_size * h + cfg.num_layers * block + h


def flops_per_token(cfg: ToyConfig, seq_len: int) -> float:
    """6 per matmul parameter (the embedding is a lookup)."""
    return 6.0 * (num_params(cfg) - cfg.vocab_size * cfg.hidden_size)


SPEC = ModelSpec(family="toy", config_cls=ToyConfig, layer_recipes=layer_recipes,
                 flops_per_token=flops_per_token, num_params=num_params)
