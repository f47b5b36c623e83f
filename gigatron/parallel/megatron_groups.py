"""megatron-core's default tensor-parallel group, looked up the same way on every rank (for torch.compile)."""

from __future__ import annotations

import torch


def resolve_default_tp_group_quietly() -> None:
    """megatron-core's RowParallelLinear asks for the default TP group with `tp_group=None` on every
    forward, and `get_tensor_model_parallel_group_if_none` then warns on rank 0 only. Under dynamo a
    warning is a graph break: on one rank alone it gives the ranks different graphs, their collectives
    different orders, and a hang. The same lookup without the warning replaces it in that module.
    """
    try:
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel import layers
    except ImportError:
        return
    original = layers.get_tensor_model_parallel_group_if_none
    if getattr(original, "resolves_quietly", False):
        return

    def quiet(tp_group=None, is_expert: bool = False, check_initialized: bool = True):
        if tp_group is None and torch.distributed.is_initialized() and parallel_state.is_initialized():
            get = (parallel_state.get_expert_tensor_parallel_group if is_expert
                   else parallel_state.get_tensor_model_parallel_group)
            return get(check_initialized=check_initialized)
        return original(tp_group, is_expert=is_expert, check_initialized=check_initialized)

    quiet.resolves_quietly = True  # type: ignore[attr-defined]
    layers.get_tensor_model_parallel_group_if_none = quiet
