"""deepspeed.comm on top of the torch.distributed group gigatron created."""

from __future__ import annotations


def adopt_process_group(backend: str) -> None:
    """Make deepspeed.comm use the existing torch.distributed default group (`backend`: gloo, nccl).

    DeepSpeed's CPU shared-memory all-reduce op is switched off first: it serves only inference
    all-reduce, which training never calls, and building it is a JIT compile on every new
    checkout (seconds) under a file lock that a process killed mid-build leaves behind, after
    which every start waits on it forever (torch's FileBaton has no owner to check).
    """
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
