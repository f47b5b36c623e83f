"""The one owner of the process layout.

`initialize_layout` runs once per process, after torch.distributed is up: it initialises
megatron-core's groups (order tp-cp-dp-pp: TP ranks are neighbours, PP slowest, the rank order of
DeepSpeed's pipeline topology too), creates the context-parallel sub-groups `parallel.cp_attention:
hybrid` needs, and returns a frozen `ParallelLayout` holding every size, rank and group. The layer
factory, the engine (DeepSpeed's `mpu` and pipeline topology), the data loader and the checkpointer
receive that object; no other module of gigatron reads megatron-core's global `parallel_state`
(tests/unit/test_package_shape.py holds the rule). megatron-core's own layers read it internally
where they take no group argument (vocab-parallel cross-entropy), which agrees by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from gigatron.config.schema import ParallelConfig


@dataclass(frozen=True)
class ParallelLayout:
    """This process's place in the (pp, dp, cp, tp) grid and the groups it belongs to.

    The default is one process: every size 1, every group None.
    """

    tp_size: int = 1
    tp_rank: int = 0
    pp_size: int = 1
    pp_rank: int = 0
    cp_size: int = 1
    cp_rank: int = 0
    # Weight replicas: DP x CP ranks, which DeepSpeed averages gradients over (CP ranks hold replicas too).
    dp_size: int = 1
    dp_rank: int = 0
    # Shares of each global batch: the ranks of one CP group read the same samples (each keeps its
    # part of every sequence), so this is DP without CP.
    data_size: int = 1
    data_rank: int = 0
    # How attention spans a CP-split sequence (parallel.cp_attention), and zigzag chunking.
    cp_attention: str = "ring"
    cp_zigzag: bool = True
    # parallel.sequence_parallel (at tp > 1): the TP ranks split the sequence between TP regions.
    sequence_parallel: bool = False
    tp_group: Any = None
    pp_group: Any = None
    cp_group: Any = None
    dp_group: Any = None  # with CP (gradient averaging, ZeRO partitions)
    cp_ulysses_group: Any = None  # cp_attention=hybrid: this rank's Ulysses group inside its CP group
    cp_ring_group: Any = None  # cp_attention=hybrid: this rank's ring group across the Ulysses groups

    def describe(self) -> str:
        """One line for logs: tp=2 pp=2 cp=1 dp=1 (sp when sequence parallel)."""
        sp = " sp" if self.sequence_parallel else ""
        return f"tp={self.tp_size}{sp} pp={self.pp_size} cp={self.cp_size} dp={self.data_size}"

    def deepspeed_topology(self) -> Any:
        """DeepSpeed's pipeline topology for this layout (axes pipe, data, model: TP fastest, PP slowest,
        the same rank order as megatron-core's groups, so both libraries agree on who is where)."""
        from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

        return PipeModelDataParallelTopology(num_pp=self.pp_size, num_mp=self.tp_size, num_dp=self.dp_size)


def initialize_layout(parallel: ParallelConfig) -> ParallelLayout:
    """Create every process group of `parallel` and return the layout; collective: call on every rank once."""
    from megatron.core import parallel_state as ps

    if not dist.is_initialized():
        raise RuntimeError("initialize_layout needs torch.distributed; call launcher.init_distributed first")
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        context_parallel_size=parallel.cp,
        # Gloo twins of every NCCL group are only useful on GPUs; on the CPU the groups are gloo already.
        create_gloo_process_groups=False,
    )
    ulysses_group = ring_group = None
    if parallel.cp > 1 and parallel.cp_attention == "hybrid":
        ulysses_group, ring_group = _hybrid_cp_groups(ps.get_context_parallel_global_ranks(), parallel.cp_ulysses)
    return ParallelLayout(
        tp_size=ps.get_tensor_model_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        cp_size=ps.get_context_parallel_world_size(),
        cp_rank=ps.get_context_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(with_context_parallel=True),
        dp_rank=ps.get_data_parallel_rank(with_context_parallel=True),
        data_size=ps.get_data_parallel_world_size(),
        data_rank=ps.get_data_parallel_rank(),
        cp_attention=parallel.cp_attention,
        cp_zigzag=parallel.cp_zigzag,
        sequence_parallel=parallel.sequence_parallel and parallel.tp > 1,
        tp_group=ps.get_tensor_model_parallel_group(),
        pp_group=ps.get_pipeline_model_parallel_group(),
        cp_group=ps.get_context_parallel_group(),
        dp_group=ps.get_data_parallel_group(with_context_parallel=True),
        cp_ulysses_group=ulysses_group,
        cp_ring_group=ring_group,
    )


def release_layout() -> None:
    """Forget megatron-core's groups (before the process group they were made from is destroyed)."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()


def _hybrid_cp_groups(mine: list[int], ulysses: int) -> tuple[Any, Any]:
    """Cut each CP group's ranks into Ulysses groups of `ulysses` consecutive ranks; ranks at the same
    place in those form the ring groups. Every rank creates every group (torch.distributed requires
    it), in one order agreed through an all-gather."""
    everyone: list[list[int]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(everyone, list(mine))
    me = dist.get_rank()
    ulysses_group = ring_group = None
    for cp_ranks in sorted({tuple(r) for r in everyone}):
        for start in range(0, len(cp_ranks), ulysses):
            members = list(cp_ranks[start:start + ulysses])
            created = dist.new_group(members)
            if me in members:
                ulysses_group = created
        for offset in range(ulysses):
            members = list(cp_ranks[offset::ulysses])
            created = dist.new_group(members)
            if me in members:
                ring_group = created
    return ulysses_group, ring_group


class DeepSpeedMPU:
    """The `mpu` DeepSpeed's engine accepts, answered from the layout: model parallel = the TP group,
    data parallel = DP x CP (CP ranks hold replicas of the weights too)."""

    def __init__(self, layout: ParallelLayout) -> None:
        self.layout = layout

    def get_model_parallel_rank(self) -> int:
        return self.layout.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.layout.tp_size

    def get_model_parallel_group(self) -> Any:
        return self.layout.tp_group

    def get_data_parallel_rank(self) -> int:
        return self.layout.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.layout.dp_size

    def get_data_parallel_group(self) -> Any:
        return self.layout.dp_group
