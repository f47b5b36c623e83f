"""Collectives with the gradients context parallelism needs (gloo and NCCL alike)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    world = dist.get_world_size(group)
    if x.shape[scatter_dim] % world:
        raise ValueError(f"dimension {scatter_dim} of size {x.shape[scatter_dim]} cannot be split over {world} ranks")
    send = torch.stack(x.chunk(world, dim=scatter_dim)).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, scatter_dim: int, gather_dim: int):
        ctx.group, ctx.scatter_dim, ctx.gather_dim = group, scatter_dim, gather_dim
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad.contiguous(), ctx.group, ctx.gather_dim, ctx.scatter_dim), None, None, None


def all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Split `x` along `scatter_dim` into one piece per rank, send piece i to rank i, and concatenate
    what arrives (in rank order) along `gather_dim`; the backward is the reverse exchange."""
    return _AllToAll.apply(x, group, scatter_dim, gather_dim)


def all_gather_positions(positions: torch.Tensor, group) -> torch.Tensor:
    """Every rank's token positions, concatenated in rank order (no gradient)."""
    pieces = [torch.empty_like(positions) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, positions.contiguous(), group=group)
    return torch.cat(pieces)


class RingExchange:
    """Pass tensors to the next rank of a group and receive the previous rank's, asynchronously."""

    def __init__(self, group) -> None:
        self.group = group
        ranks = dist.get_process_group_ranks(group)
        me = ranks.index(dist.get_rank())
        self.next, self.prev = ranks[(me + 1) % len(ranks)], ranks[(me - 1) % len(ranks)]

    def start(self, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], tuple[list, list[torch.Tensor]]]:
        """Begin sending `tensors` on; returns the receive buffers and a handle for `finish`.

        The handle keeps the tensors being sent alive: a buffer freed while its send is in flight
        would be sent as garbage (or crash the backend).
        """
        sent = [t.contiguous() for t in tensors]
        received = [torch.empty_like(t) for t in sent]
        ops = [dist.P2POp(dist.isend, t, self.next, self.group) for t in sent]
        ops += [dist.P2POp(dist.irecv, r, self.prev, self.group) for r in received]
        return received, (dist.batch_isend_irecv(ops), sent)

    @staticmethod
    def finish(handle: tuple[list, list[torch.Tensor]]) -> None:
        """Wait for a started exchange."""
        for request in handle[0]:
            request.wait()
