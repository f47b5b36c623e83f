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
# Parameters carrying this attribute get no weight decay (e.g. SSM A_log, D, dt_bias).
NO_DECAY_ATTR = "no_weight_decay"


def _normal(shape: torch.Size, g: torch.Generator, std: float) -> torch.Tensor:
    return torch.randn(shape, generator=g) * std


def _uniform(shape: torch.Size, g: torch.Generator, low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=g) * (high - low) + low


def _a_log(shape: torch.Size, g: torch.Generator, low: float, high: float) -> torch.Tensor:
    """Mamba's A = -exp(A_log) with A ~ U(low, high)."""
    return torch.log(_uniform(shape, g, low, high))


def _dt_bias(shape: torch.Size, g: torch.Generator, dt_min: float, dt_max: float, floor: float) -> torch.Tensor:
    """Inverse softplus of dt ~ log-uniform(dt_min, dt_max), clamped at `floor` (mamba_ssm's scheme)."""
    log_dt = _uniform(shape, g, math.log(dt_min), math.log(dt_max))
    dt = torch.exp(log_dt).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def _a_log_s4d_real(shape: torch.Size, g: torch.Generator) -> torch.Tensor:
    """Mamba-1's deterministic A = -(1, 2, ..., d_state) for every channel (S4D-real), as log."""
    return torch.log(torch.arange(1, shape[-1] + 1, dtype=torch.float32)).expand(shape).clone()


# Random rules draw the full logical tensor from the per-name generator (then TP slices it).
_RANDOM_RULES = {"normal": _normal, "uniform": _uniform, "a_log": _a_log, "dt_bias": _dt_bias,
                 "a_log_s4d_real": _a_log_s4d_real}


def mark_init(param: nn.Parameter, kind: str, *args: float) -> nn.Parameter:
    """Record how `param` is initialised.

    kind: 'ones', 'zeros', 'normal' (std), 'uniform' (low, high), 'a_log' (low, high: A ~ U(low, high)),
    'dt_bias' (dt_min, dt_max, floor).
    """
    if kind not in ("ones", "zeros", *_RANDOM_RULES):
        raise ValueError(f"unknown init kind {kind!r}; valid: ones, zeros, {', '.join(_RANDOM_RULES)}")
    setattr(param, INIT_ATTR, (kind, tuple(float(a) for a in args)))
    return param


def no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Exclude `param` from weight decay, as mamba_ssm does for A_log, D and dt_bias."""
    setattr(param, NO_DECAY_ATTR, True)
    return param


TP_PLAN_ATTR = "gigatron_tp_plan"


def mark_tp_plan(param: nn.Parameter, dim: int, segments: list[int] | None = None) -> nn.Parameter:
    """Record how `param` is split at TP>1, also on a TP=1 build.

    Checkpoint conversion builds the TP=1 model to learn every parameter's logical shape and how
    any TP layout shards it, without process groups.
    """
    setattr(param, TP_PLAN_ATTR, (dim, None if segments is None else list(segments)))
    return param


def tp_plan(param: nn.Parameter) -> tuple[int, list[int] | None] | None:
    """(shard dim, fused segment sizes) of a TP-split parameter, or None if it is replicated."""
    return getattr(param, TP_PLAN_ATTR, None)


def mark_sharded(param: nn.Parameter, dim: int, segments: list[int] | None = None) -> nn.Parameter:
    """Declare `param` a TP shard along `dim`.

    `segments` (full sizes along dim) describe a fused tensor such as Mamba's in_proj [z, x, B, C, dt]:
    each segment is split across ranks separately and the rank's pieces concatenated, so every rank
    holds its own part of every segment.
    """
    mark_tp_plan(param, dim, segments)
    param.tensor_model_parallel = True
    param.partition_dim = dim
    param.partition_stride = 1
    if segments is not None:
        param.partition_segments = list(segments)
    return param


def scaled_std(std: float, num_layers: int) -> float:
    """GPT-2/Megatron residual-branch output init: std / sqrt(2 * num_layers)."""
    return std / math.sqrt(2.0 * num_layers)


def name_seed(seed: int, name: str) -> int:
    """A generator seed for one named parameter: the same on every layout and process."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _full_shape(param: nn.Parameter, tp_size: int) -> tuple[torch.Size, int | None]:
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return param.shape, None
    dim = int(param.partition_dim)
    shape = list(param.shape)
    shape[dim] *= tp_size
    return torch.Size(shape), dim


def shard_of(full: torch.Tensor, dim: int, tp_rank: int, tp_size: int, segments: list[int] | None = None
             ) -> torch.Tensor:
    """This rank's part of a full logical tensor (segment by segment for fused tensors)."""
    if segments is None:
        return full.chunk(tp_size, dim=dim)[tp_rank]
    pieces = [seg.chunk(tp_size, dim=dim)[tp_rank] for seg in full.split(segments, dim=dim)]
    return torch.cat(pieces, dim=dim)


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
        kind, args = rule
        if kind == "ones":
            param.fill_(1.0)
            continue
        if kind == "zeros":
            param.zero_()
            continue
        shape, dim = _full_shape(param, tp_size)
        generator = torch.Generator().manual_seed(name_seed(seed, name))
        full = _RANDOM_RULES[kind](shape, generator, *args)
        if dim is not None:
            full = shard_of(full, dim, tp_rank, tp_size, getattr(param, "partition_segments", None))
        param.copy_(full.to(param.dtype))
