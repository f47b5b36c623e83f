"""Activation recomputation, applied to a built model from outside (Megatron-LM's recompute options).

Model code only declares what its modules are, with a class (or instance) attribute `recompute_as`:
`"layer"` for one unit of the residual stack (a Transformer block, a hybrid pattern layer, a FIT
block, a DiT block) and, inside layers, `"core_attn"`, `"mlp"`, `"layernorm"` or `"mamba"`.
`apply_recompute` then installs forward hooks that run those modules under non-reentrant activation
checkpointing (as torch's composable `checkpoint` does), so parameter names, checkpoints, the layer
factory and every parallel layout stay exactly as they are without recomputation:

- `selective`: every module whose role is in `modules` keeps only its inputs for the backward pass
  and runs its forward again there. A norm inside a layer also releases its output until the
  layer's backward (`_DiscardedOutputs`, Megatron-LM's layernorm recomputation).
- `full`, method `uniform`: this process's layers (one pipeline stage's) are cut into chunks of
  `num_layers` consecutive layers; each chunk keeps only its input.
- `full`, method `block`: the first `num_layers` layers of this process each keep only their input.

A recomputed forward starts from the RNG state of the original one (CPU and the inputs' device), so
dropout draws the same masks, and calls every submodule through its hooks, so DeepSpeed ZeRO-3
gathers the parameters it needs again.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# The generator behind torch's composable `checkpoint` (torch.distributed._composable): hook-driven
# non-reentrant checkpointing, which a region spanning several sibling modules needs.
from torch.utils.checkpoint import _checkpoint_without_reentrant_generator

from gigatron.config.schema import RECOMPUTE_MODULES, TrainConfig

LAYER = "layer"
MODULES = RECOMPUTE_MODULES
GRANULARITIES = ("none", "selective", "full")
METHODS = ("uniform", "block")


# Callbacks told the inputs of every region that starts recording (`observe_region_inputs`): a
# recomputed region keeps its inputs for the backward pass instead of what its operations save.
_input_observers: list = []


@contextmanager
def observe_region_inputs(callback) -> Iterator[None]:
    """Call `callback(tensor)` for each tensor input a recomputed region keeps, while inside."""
    _input_observers.append(callback)
    try:
        yield
    finally:
        _input_observers.remove(callback)


def role(module: nn.Module) -> str | None:
    """What `module` declares itself to be for recomputation (None: nothing)."""
    return getattr(module, "recompute_as", None)


def stack_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """This process's layers: modules declaring `"layer"` that are not inside another, in model order."""
    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            if role(child) == LAYER:
                found.append((prefix + name, child))
            else:
                visit(f"{prefix}{name}.", child)

    visit("", model)
    return found


class _Region:
    """One recomputed region: a module, or a chain of consecutive layers where each layer's outputs
    replace the leading arguments of the next (what nn.Sequential and DeepSpeed's pipeline do).

    The first module's forward pre-hook enters non-reentrant checkpointing (tensors saved for backward
    become recipes to recompute), the last one's forward hook leaves it. In the backward pass the
    chain runs again from the saved inputs with these hooks off.
    """

    def __init__(self, modules: list[nn.Module], discard: _DiscardedOutputs | None = None) -> None:
        self.modules = modules
        self.enabled = True
        self.discard = discard
        self._generator: Iterator[None] | None = None
        self._inputs: tuple[tuple, dict] | None = None
        modules[0].register_forward_pre_hook(self._enter, with_kwargs=True)
        modules[-1].register_forward_hook(self._leave, prepend=True, always_call=True)

    @contextmanager
    def _hooks_off(self) -> Iterator[None]:
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        out = None
        for module in self.modules:
            out = module(*args, **kwargs)
            outputs = out if isinstance(out, tuple) else (out,)
            args = outputs + args[len(outputs):]
        return out

    def _enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self.enabled or not torch.is_grad_enabled():
            return
        self._generator = _checkpoint_without_reentrant_generator(
            self._run, True, lambda: (nullcontext(), self._hooks_off()), "default", False, True, *args, **kwargs)
        next(self._generator)
        if self.discard is not None:
            self._inputs = (args, kwargs)
        for observe in _input_observers:
            for value in [*args, *kwargs.values()]:
                if isinstance(value, torch.Tensor):
                    observe(value)

    def _leave(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        generator, self._generator = self._generator, None
        if generator is None:
            return
        if self.discard is not None and self._inputs is not None:
            self.discard.add(module, *self._inputs, output)
            self._inputs = None
        try:
            next(generator)
        except StopIteration:
            return
        raise RuntimeError("activation recomputation: the checkpoint of a region did not finish")


class _DiscardedOutputs:
    """Megatron-LM's layernorm recomputation (its CheckpointWithoutOutput) for the norms of one layer.

    A norm's output is what the next linear keeps for its backward. When the layer's forward is over,
    the storage of that output is released (the tensor keeps its shape, so the linear's saved
    reference stays valid), and as soon as the gradient of one of the layer's outputs is computed (the
    layer's backward has not started yet) the norm runs again on its kept input and refills it.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.pending: list[tuple[nn.Module, tuple, dict, torch.Tensor]] = []
        layer.register_forward_hook(self._release)

    def add(self, norm: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """Release `output` of `norm(*args, **kwargs)` after the layer's forward."""
        if (isinstance(output, torch.Tensor) and output.requires_grad and output.is_contiguous()
                and output.storage_offset() == 0
                and output.untyped_storage().nbytes() == output.numel() * output.element_size()):
            self.pending.append((norm, args, kwargs, output))

    def _release(self, layer: nn.Module, inputs: tuple, output: Any) -> None:
        pending, self.pending = self.pending, []
        outputs = [t for t in (output if isinstance(output, tuple) else (output,))
                   if isinstance(t, torch.Tensor) and t.requires_grad]
        if not pending or not outputs:
            return
        for _, _, _, kept in pending:
            kept.untyped_storage().resize_(0)
        refilled = False

        def refill(grad: torch.Tensor) -> None:
            nonlocal refilled
            if refilled:
                return
            refilled = True
            with torch.no_grad():
                for norm, args, kwargs, kept in pending:
                    fresh = norm(*args, **kwargs)
                    # Into the same storage, not through the tensor: its version must not change.
                    kept.untyped_storage().resize_(fresh.untyped_storage().nbytes())
                    kept.untyped_storage().copy_(fresh.untyped_storage())

        for tensor in outputs:
            tensor.register_hook(refill)


@dataclass
class RecomputePlan:
    """What `apply_recompute` hooked on this process: region names by kind."""

    granularity: str = "none"
    regions: dict[str, list[str]] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the log, e.g. `recompute full: layers 1, 2, 3` or `recompute selective: 4 mlp, 4 core_attn`."""
        if self.granularity == "none":
            return "recompute: none"
        if not self.regions:
            return f"recompute {self.granularity}: nothing on this rank"
        if self.granularity == "selective":
            return f"recompute selective: {', '.join(f'{len(v)} {k}' for k, v in self.regions.items())}"
        parts = [f"{kind} " + ", ".join(names) for kind, names in self.regions.items()]
        return "recompute full: " + "; ".join(parts)


def _is_chain_parent(module: nn.Module) -> bool:
    """Containers whose forward feeds each child's outputs straight into the next child."""
    if isinstance(module, nn.Sequential):
        return True
    pipe = sys.modules.get("deepspeed.runtime.pipe.module")
    return pipe is not None and isinstance(module, pipe.PipelineModule)


def _chunks(model: nn.Module, layers: list[tuple[str, nn.Module]], size: int) -> list[list[tuple[str, nn.Module]]]:
    chunks = [layers[i:i + size] for i in range(0, len(layers), size)]
    if size == 1:
        return chunks
    parents = {name: module for name, module in model.named_modules()}
    for chunk in chunks:
        parent_names = {name.rpartition(".")[0] for name, _ in chunk}
        parent = parents[parent_names.pop()] if len(parent_names) == 1 else None
        children = [] if parent is None else [name for name, _ in parent.named_children()]
        local = [name.rpartition(".")[2] for name, _ in chunk]
        start = children.index(local[0]) if local[0] in children else -1
        if parent is None or not _is_chain_parent(parent) or children[start:start + len(local)] != local:
            raise ValueError(
                f"train.recompute_num_layers={size} with train.recompute_method=uniform recomputes chunks of "
                f"consecutive layers, but layers {[name for name, _ in chunk]} of this model are not consecutive "
                "children of one nn.Sequential (the model's own forward drives them); use "
                "train.recompute_num_layers=1 or train.recompute_method=block")
    return chunks


def apply_recompute(model: nn.Module, granularity: str, *, method: str = "uniform", num_layers: int | None = None,
                    modules: tuple[str, ...] | list[str] = ("core_attn",)) -> RecomputePlan:
    """Hook activation recomputation into `model` (this process's part of it); see the module docstring.

    `num_layers` (full only): layers per chunk (uniform, default 1) or layers recomputed (block,
    default all). Call once per model, before wrapping it in DeepSpeed.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"recompute granularity {granularity!r} must be one of {GRANULARITIES}")
    plan = RecomputePlan(granularity)
    if granularity == "none":
        return plan
    if granularity == "selective":
        unknown = sorted(set(modules) - set(MODULES))
        if unknown:
            raise ValueError(f"recompute modules {unknown} are not among {MODULES}")
        # Norms inside a layer also release their output until the layer's backward (Megatron-LM's
        # "layernorm"); a norm outside the layers (the final one) keeps it.
        layer_of = {}
        for _, layer in stack_layers(model) if "layernorm" in modules else []:
            discard = None
            for inner in layer.modules():
                if role(inner) == "layernorm":
                    discard = discard or _DiscardedOutputs(layer)
                    layer_of[inner] = discard
        for name, module in model.named_modules():
            kind = role(module)
            if kind in modules:
                _Region([module], layer_of.get(module) if kind == "layernorm" else None)
                plan.regions.setdefault(kind, []).append(name)
        return plan
    if method not in METHODS:
        raise ValueError(f"recompute method {method!r} must be one of {METHODS}")
    layers = stack_layers(model)
    if method == "block":
        chosen = layers if num_layers is None else layers[:num_layers]
        chunks = [[layer] for layer in chosen]
    else:
        chunks = _chunks(model, layers, num_layers or 1)
    for chunk in chunks:
        _Region([module for _, module in chunk])
        plan.regions.setdefault("chunks" if len(chunk) > 1 else "layers", []).append(
            "+".join(name for name, _ in chunk))
    return plan


def apply_recompute_config(model: nn.Module, train: TrainConfig) -> RecomputePlan:
    """`apply_recompute` with the `train.recompute*` keys of a run config."""
    return apply_recompute(model, train.recompute, method=train.recompute_method,
                           num_layers=train.recompute_num_layers, modules=train.recompute_modules)
