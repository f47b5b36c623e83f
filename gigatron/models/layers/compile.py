"""Regional compilation (`train.compile`): torch.compile applied per layer from outside, as torchtitan does.

Each layer of the residual stack (a module declaring `recompute_as = "layer"`, see recompute.py) gets
its `forward` replaced by a compiled one. Only `forward` is compiled, not the module's call: the
module's hooks (activation recomputation, DeepSpeed's) stay eager around it, parameter names and
checkpoints do not change, and every layer of one kind shares one compiled graph (dynamo's code
cache is per code object, guarded on the module's attributes and shapes).

A recompute region inside a layer (selective recomputation: core_attn, mlp, layernorm, mamba) is
hooked on its own module; dynamo cannot trace those hooks, and a graph that spans them would save
different tensors than the region's recomputation does. A layer holding such a region is therefore
compiled one level down: every child that holds no region inside it is compiled whole (a region
itself included) when it is a unit the model declares (a `recompute_as` role: a norm, the MLP, the
attention core, the Mamba mixer) or a container; single projections and the layer's own glue
(residual additions, rotary embedding) stay eager.

Collectives dynamo can trace (sequence parallelism's all-gather and reduce-scatter) are compiled into
the graph; the others (context parallelism's point-to-point ring, megatron-core's asynchronous
all-reduce) are graph breaks and run eagerly between compiled pieces. Every rank of a group must
break in the same places, or the ranks' collectives run in different orders and hang: hence
`resolve_default_tp_group_quietly` (megatron-core warns on rank 0 only). ZeRO-3, whose hooks change
parameter shapes around every module, is refused by config validation. How much of a layer is
compiled is in the log (`graph breaks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from gigatron.models.layers.recompute import RecomputePlan, role, stack_layers
from gigatron.parallel.megatron_groups import resolve_default_tp_group_quietly

# Dynamo compiles a frame again for each new guard failure (a MatFormer granularity, a last partial
# batch, the first step vs later ones); torch's default of 8 variants per frame is too few for the
# granularities times pipeline micro-batch shapes of one run.
RECOMPILE_LIMIT = 64


@dataclass
class CompilePlan:
    """What `apply_compile` compiled on this process: module names, by how they were chosen."""

    enabled: bool = False
    layers: list[str] = field(default_factory=list)  # whole layers
    parts: list[str] = field(default_factory=list)  # children of layers that hold a recompute region

    def describe(self) -> str:
        """One line for the log, e.g. `compile: 4 layers` or `compile: none`."""
        if not self.enabled:
            return "compile: none"
        pieces = []
        if self.layers:
            pieces.append(f"{len(self.layers)} layers")
        if self.parts:
            pieces.append(f"{len(self.parts)} parts of layers holding a recompute region")
        return "compile: " + (", ".join(pieces) if pieces else "nothing on this rank")


def _region_modules(model: nn.Module, recompute: RecomputePlan) -> set[nn.Module]:
    """Modules that carry a recompute region's hooks."""
    by_name = dict(model.named_modules())
    names = [part for group in recompute.regions.values() for joined in group for part in joined.split("+")]
    return {by_name[name] for name in names if name in by_name}


def _compile_forward(module: nn.Module, backend: str) -> None:
    # Assigned on the instance: nn.Module's call finds it before the class's forward, and it is not a
    # parameter, buffer or submodule, so state dicts and names stay the same.
    module.forward = torch.compile(module.forward, backend=backend)  # type: ignore[method-assign]


def apply_compile(model: nn.Module, enabled: bool, recompute: RecomputePlan | None = None,
                  backend: str = "inductor") -> CompilePlan:
    """Compile this process's layers in place (see the module docstring); call after `apply_recompute`.

    `backend` is torch.compile's (training uses inductor; "aot_eager" traces and partitions the same
    graphs without generating kernels).
    """
    plan = CompilePlan(enabled)
    if not enabled:
        return plan
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_cache_size_limit = max(
        torch._dynamo.config.accumulated_cache_size_limit, RECOMPILE_LIMIT * 4)
    resolve_default_tp_group_quietly()
    regions = _region_modules(model, recompute) if recompute is not None else set()

    def holds_region(module: nn.Module) -> bool:
        return any(inner in regions for inner in module.modules() if inner is not module)

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            if holds_region(child):
                visit(f"{prefix}{name}.", child)
            elif role(child) is not None or any(True for _ in child.children()):
                _compile_forward(child, backend)
                plan.parts.append(prefix + name)

    for name, layer in stack_layers(model):
        if holds_region(layer):
            visit(name + ".", layer)
        else:
            _compile_forward(layer, backend)
            plan.layers.append(name)
    return plan


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"].get("unique_graphs", 0)


def compile_report() -> str:
    """What compilation cost this process so far, for the log after the first step."""
    from torch._dynamo.utils import calculate_time_spent, counters

    spent = calculate_time_spent()
    seconds = spent.get("entire_frame_compile", 0.0) + spent.get("entire_backward_compile", 0.0)
    graphs = counters["stats"].get("unique_graphs", 0)
    breaks = sum(counters["graph_break"].values())
    return f"compile: {seconds:.1f} s for {graphs} graphs (forward and backward), {breaks} graph breaks"
