"""Every parameter of a model by logical name: its TP=1 shape and how any TP layout splits it.

Learned by building the model once on the meta device (no memory, no process groups); the layer
factory records each parameter's split (see `mark_tp_plan`). This is what lets a checkpoint move
between layouts: shards are merged into logical tensors and split again by the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import shard_of, tp_plan
from gigatron.models.registry import build_model


@dataclass(frozen=True)
class ParamPlan:
    """One logical parameter: name (global layer index first), full shape, TP split."""

    name: str
    shape: tuple[int, ...]
    dim: int | None = None  # None: replicated on every TP rank
    segments: tuple[int, ...] | None = None  # fused tensors: sizes along `dim`, each split separately

    @property
    def numel(self) -> int:
        """Elements of the logical tensor."""
        return int(torch.Size(self.shape).numel())

    def shard_shape(self, tp_size: int) -> tuple[int, ...]:
        """Shape of one TP rank's piece."""
        if self.dim is None or tp_size == 1:
            return self.shape
        shape = list(self.shape)
        shape[self.dim] //= tp_size
        return tuple(shape)

    def take_shard(self, full: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
        """Rank `tp_rank`'s piece of the logical tensor (contiguous)."""
        if self.dim is None or tp_size == 1:
            return full
        segments = None if self.segments is None else list(self.segments)
        return shard_of(full, self.dim, tp_rank, tp_size, segments).contiguous()

    def place_shard(self, out: torch.Tensor, shard: torch.Tensor, tp_rank: int, tp_size: int) -> None:
        """Copy rank `tp_rank`'s piece into its place in the logical tensor `out` (inverse of take_shard)."""
        assert self.dim is not None
        shard = shard.view(self.shard_shape(tp_size))
        segments = self.segments or (self.shape[self.dim],)
        full_offset = shard_offset = 0
        for size in segments:
            piece = size // tp_size
            out.narrow(self.dim, full_offset + tp_rank * piece, piece).copy_(shard.narrow(self.dim, shard_offset, piece))
            full_offset += size
            shard_offset += piece


def param_plans(model_cfg: Any) -> dict[str, ParamPlan]:
    """Plans of all trainable parameters, in model order; a tied weight appears once, under its first name."""
    model = build_model(model_cfg, LayerFactory(device="meta"))
    plans = {}
    for name, param in model.named_parameters():
        split = tp_plan(param)
        dim, segments = (None, None) if split is None else split
        plans[name] = ParamPlan(name, tuple(param.shape), dim, None if segments is None else tuple(segments))
    return plans


def tied_aliases(model_cfg: Any) -> dict[str, str]:
    """State-dict keys that name the same tensor as a parameter listed under another name (tied weights)."""
    model = build_model(model_cfg, LayerFactory(device="meta"))
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases
