"""Layout-independent parameter initialisation.

Every parameter is drawn at its full logical shape from a generator seeded by (seed, name) and
then cut to this rank's tensor-parallel shard. The same seed therefore gives the same model on
one process, under TP=2, or split into pipeline stages: layer names are global layer indices in
both `nn.Sequential` and DeepSpeed's `PipelineModule`. That is what lets tests compare loss
curves across layouts exactly, and what lets a user change layout without changing the model.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

INIT_ATTR = "gigatron_init"


def mark_init(param: nn.Parameter, kind: str, std: float = 0.0) -> nn.Parameter:
    """Record how `param` is initialised: kind is 'normal' (with std), 'ones' or 'zeros'."""
    if kind not in ("normal", "ones", "zeros"):
        raise ValueError(f"unknown init kind {kind!r}; valid: normal, ones, zeros")
    setattr(param, INIT_ATTR, (kind, float(std)))
    return param


def scaled_std(std: float, num_layers: int) -> float:
    """GPT-2/Megatron residual-branch output init: std / sqrt(2 * num_layers)."""
    return std / math.sqrt(2.0 * num_layers)


def _name_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _full_shape(param: nn.Parameter, tp_size: int) -> tuple[torch.Size, int | None]:
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return param.shape, None
    dim = int(param.partition_dim)
    shape = list(param.shape)
    shape[dim] *= tp_size
    return torch.Size(shape), dim


@torch.no_grad()
def initialize_parameters(module: nn.Module, seed: int, tp_rank: int = 0, tp_size: int = 1) -> None:
    """Fill every parameter of `module` from its `mark_init` rule, identically on any layout.

    Raises if a parameter was created without a rule: all parameters must come from the layer
    factory so that no layout-dependent default initialisation slips in.
    """
    for name, param in module.named_parameters():
        if param.device.type == "meta":
            continue
        rule = getattr(param, INIT_ATTR, None)
        if rule is None:
            raise RuntimeError(f"parameter {name!r} has no init rule; create it through the layer factory")
        kind, std = rule
        if kind == "ones":
            param.fill_(1.0)
            continue
        if kind == "zeros":
            param.zero_()
            continue
        shape, dim = _full_shape(param, tp_size)
        generator = torch.Generator().manual_seed(_name_seed(seed, name))
        full = torch.randn(shape, generator=generator, dtype=torch.float32) * std
        if dim is not None:
            full = full.chunk(tp_size, dim=dim)[tp_rank]
        param.copy_(full.to(param.dtype))
