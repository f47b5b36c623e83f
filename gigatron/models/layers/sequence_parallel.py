"""Sequence parallelism inside the tensor-parallel group (Korthikanti et al. 2022), for batch-first tensors.

Between tensor-parallel regions (norms, residual adds, dropout) each TP rank holds 1/tp of the
sequence, [batch, seq/tp, hidden]; a column-parallel linear all-gathers its input along the sequence
and a row-parallel linear reduce-scatters its output along it, where plain TP would copy and
all-reduce. megatron-core's versions assume sequence-first tensors and allocate CUDA buffers, so
these are gigatron's own, on torch.distributed collectives that gloo and NCCL both have.

As in Megatron-LM, a column-parallel linear keeps only its input shard for the backward pass and
gathers it again there, so activations between regions cost 1/tp of their size. Parameters used
on a sequence shard (norm weights, row-parallel biases) see part of the tokens on each rank: their
gradients are summed over the TP group inside autograd (`sum_grad_over`), so every rank applies the
same update without help from the optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

SEQ_DIM = 1


def all_gather_sequence(x: torch.Tensor, group: Any) -> torch.Tensor:
    """[b, s/tp, ...] on each rank -> [b, s, ...], ranks' pieces in rank order (no autograd); contiguous."""
    size = dist.get_world_size(group)
    out = torch.empty((size, *x.shape), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out.flatten(0, 1), x.contiguous(), group=group)
    return out.movedim(0, SEQ_DIM).flatten(SEQ_DIM, SEQ_DIM + 1).contiguous()


def reduce_scatter_sequence(x: torch.Tensor, group: Any) -> torch.Tensor:
    """[b, s, ...] partial sums on each rank -> this rank's [b, s/tp, ...] of the total (no autograd); contiguous."""
    size = dist.get_world_size(group)
    if x.shape[SEQ_DIM] % size:
        raise ValueError(f"sequence length {x.shape[SEQ_DIM]} is not divisible by the {size} ranks of "
                         "sequence parallelism")
    pieces = x.unflatten(SEQ_DIM, (size, -1)).movedim(SEQ_DIM, 0).contiguous()
    out = torch.empty(pieces.shape[1:], dtype=x.dtype, device=x.device)
    dist.reduce_scatter_tensor(out, pieces.flatten(0, 1), group=group)
    return out


def shard_sequence(x: torch.Tensor, group: Any) -> torch.Tensor:
    """This rank's 1/tp of the sequence (a view) of a tensor every rank holds whole (no autograd)."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if x.shape[SEQ_DIM] % size:
        raise ValueError(f"sequence length {x.shape[SEQ_DIM]} is not divisible by the {size} ranks of "
                         "sequence parallelism")
    return x.chunk(size, dim=SEQ_DIM)[rank]


def _identity(x: torch.Tensor, group: Any) -> torch.Tensor:
    return x.view_as(x)


def _all_reduced(x: torch.Tensor, group: Any) -> torch.Tensor:
    out = x.contiguous().clone()
    dist.all_reduce(out, group=group)
    return out


class _Collective(torch.autograd.Function):
    """`forward_op(x, group)` forward, `backward_op(grad, group)` backward: the pairs below."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any, forward_op, backward_op) -> torch.Tensor:
        ctx.group, ctx.backward_op = group, backward_op
        return forward_op(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.backward_op(grad, ctx.group), None, None, None


class _GatherLinear(torch.autograd.Function):
    """y = all_gather_sequence(x) · Wᵀ (+ b), keeping only the shard x for backward (gathered again there)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: Any) -> torch.Tensor:
        ctx.group, ctx.has_bias = group, bias is not None
        ctx.save_for_backward(x, weight)
        return F.linear(all_gather_sequence(x, group), weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        full = all_gather_sequence(x, ctx.group)
        grad_input = reduce_scatter_sequence(grad.matmul(weight), ctx.group)
        grad_weight = grad.flatten(0, -2).t().matmul(full.flatten(0, -2))
        grad_bias = grad.flatten(0, -2).sum(0) if ctx.has_bias else None
        return grad_input, grad_weight, grad_bias, None


def gather_sequence(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Sequence shard -> whole sequence, autograd-aware (backward: reduce-scatter; the gradients of the
    whole sequence are partial sums over the ranks' channel shards)."""
    return _Collective.apply(x, group, all_gather_sequence, reduce_scatter_sequence)


def scatter_sequence(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Partial sums over the whole sequence -> this rank's shard of the total (backward: all-gather)."""
    return _Collective.apply(x, group, reduce_scatter_sequence, all_gather_sequence)


def sum_grad_over(x: torch.Tensor, group: Any) -> torch.Tensor:
    """`x` unchanged, its gradient summed over `group` (a parameter used on a sequence shard)."""
    return _Collective.apply(x, group, _identity, _all_reduced)


def gather_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: Any) -> torch.Tensor:
    """A column-parallel linear on a sequence shard: the whole sequence times this rank's weight rows."""
    return _GatherLinear.apply(x, weight, bias, group)


class ColumnLinear(nn.Module):
    """A column-parallel linear over a sequence shard: whole sequence in, this rank's output rows out."""

    def __init__(self, in_features: int, local_out: int, bias: bool, group: Any, device=None, dtype=None) -> None:
        super().__init__()
        self.group = group
        self.weight = nn.Parameter(torch.empty(local_out, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(local_out, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gather_linear(x, self.weight, self.bias, self.group)


class RowLinear(nn.Module):
    """A row-parallel linear whose summed output is left on the ranks as sequence shards."""

    def __init__(self, local_in: int, out_features: int, bias: bool, group: Any, device=None, dtype=None) -> None:
        super().__init__()
        self.group = group
        self.weight = nn.Parameter(torch.empty(out_features, local_in, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = scatter_sequence(F.linear(x, self.weight), self.group)
        return out if self.bias is None else out + sum_grad_over(self.bias, self.group)


class VocabEmbedding(nn.Module):
    """Token embedding split over the vocabulary, its output left as sequence shards (summed over ranks)."""

    def __init__(self, local_vocab: int, dim: int, rank: int, group: Any, device=None, dtype=None) -> None:
        super().__init__()
        self.group, self.start = group, rank * local_vocab
        self.weight = nn.Parameter(torch.empty(local_vocab, dim, device=device, dtype=dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outside = (ids < self.start) | (ids >= self.start + self.weight.shape[0])
        local = F.embedding((ids - self.start).masked_fill(outside, 0), self.weight)
        return scatter_sequence(local.masked_fill(outside[..., None], 0.0), self.group)
