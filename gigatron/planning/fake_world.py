"""Any rank's process layout in one process, on a fake process group: for planning from shapes.

torch's `fake` backend answers every collective at once without communicating, so the layer
factory can build the tensor-, sequence- and context-parallel shapes of any rank of a run of any
size, under FakeTensorMode, on a laptop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist

from gigatron.config.schema import ParallelConfig
from gigatron.parallel.layout import ParallelLayout, initialize_layout, release_layout


@contextlib.contextmanager
def fake_process_layout(parallel: ParallelConfig, world_size: int, rank: int = 0) -> Iterator[ParallelLayout]:
    """The layout of global `rank` in a `world_size`-rank run of `parallel`, with no communication.

    Needs a process without torch.distributed, and leaves it without one.
    """
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a fake process layout needs a process without torch.distributed")
    dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    try:
        yield initialize_layout(parallel)
    finally:
        release_layout()
        dist.destroy_process_group()
