"""Process groups from megatron-core, and the adapter DeepSpeed needs to shard over them."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from gigatron.config.schema import ParallelConfig


@dataclass(frozen=True)
class ParallelRanks:
    """This process's coordinates in the (pp, dp, cp, tp) grid."""

    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    cp_rank: int = 0
    cp_size: int = 1
    # Which share of each global batch this rank reads, and how many shares there are: the ranks of
    # one CP group read the same samples (each keeps its part of every sequence). dp_* above count
    # CP ranks too, because they hold weight replicas that DeepSpeed averages gradients over.
    data_rank: int = 0
    data_size: int = 1

    @property
    def is_last_stage(self) -> bool:
        """Whether this rank computes the loss."""
        return self.pp_rank == self.pp_size - 1


def initialize_parallel(parallel: ParallelConfig) -> ParallelRanks:
    """Create megatron-core's TP/PP/CP/DP groups (order tp-cp-dp-pp: TP fastest, like DeepSpeed's grid)."""
    from megatron.core import parallel_state as ps

    if not dist.is_initialized():
        raise RuntimeError("initialize_parallel needs torch.distributed; call launcher.init_distributed first")
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        context_parallel_size=parallel.cp,
        # Gloo twins of every NCCL group are only useful on GPUs; on the CPU the groups are gloo already.
        create_gloo_process_groups=False,
    )
    return ParallelRanks(
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(with_context_parallel=True),
        dp_size=ps.get_data_parallel_world_size(with_context_parallel=True),
        cp_rank=ps.get_context_parallel_rank(),
        cp_size=ps.get_context_parallel_world_size(),
        data_rank=ps.get_data_parallel_rank(),
        data_size=ps.get_data_parallel_world_size(),
    )


def build_context_parallel(parallel: ParallelConfig):
    """The CP group and its attention scheme (None at cp = 1); collective: call on every rank.

    For `hybrid`, each CP group's ranks are cut into Ulysses groups of `cp_ulysses` consecutive
    ranks; ranks at the same place in those form the ring groups. Every rank creates every group
    (torch.distributed requires it), in one order agreed through an all-gather.
    """
    if parallel.cp == 1:
        return None
    from megatron.core import parallel_state as ps

    from gigatron.models.layers.cp.core import ContextParallel
    from gigatron.models.layers.cp.layout import SequenceLayout

    layout = SequenceLayout(ps.get_context_parallel_rank(), parallel.cp, parallel.cp_zigzag)
    group = ps.get_context_parallel_group()
    if parallel.cp_attention != "hybrid":
        return ContextParallel(layout, group, parallel.cp_attention)
    mine = ps.get_context_parallel_global_ranks()
    everyone: list[list[int]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(everyone, list(mine))
    u, me = parallel.cp_ulysses, dist.get_rank()
    ulysses_group = ring_group = None
    for cp_ranks in sorted({tuple(r) for r in everyone}):
        for start in range(0, len(cp_ranks), u):
            members = list(cp_ranks[start:start + u])
            created = dist.new_group(members)
            if me in members:
                ulysses_group = created
        for offset in range(u):
            members = list(cp_ranks[offset::u])
            created = dist.new_group(members)
            if me in members:
                ring_group = created
    return ContextParallel(layout, group, "hybrid", ulysses_group, ring_group)


def destroy_parallel() -> None:
    """Tear down megatron-core's groups (tests run several layouts in one process)."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()


class MegatronMPU:
    """The `mpu` object DeepSpeed accepts: model parallel = megatron's TP group, data parallel =
    megatron's DP group (including CP ranks, which hold replicas of the weights too)."""

    def get_model_parallel_rank(self) -> int:
        from megatron.core import parallel_state as ps

        return ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        from megatron.core import parallel_state as ps

        return ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        from megatron.core import parallel_state as ps

        return ps.get_tensor_model_parallel_group()

    def get_data_parallel_rank(self) -> int:
        from megatron.core import parallel_state as ps

        return ps.get_data_parallel_rank(with_context_parallel=True)

    def get_data_parallel_world_size(self) -> int:
        from megatron.core import parallel_state as ps

        return ps.get_data_parallel_world_size(with_context_parallel=True)

    def get_data_parallel_group(self):
        from megatron.core import parallel_state as ps

        return ps.get_data_parallel_group(with_context_parallel=True)
