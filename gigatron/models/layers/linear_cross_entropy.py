"""Output projection and cross-entropy in chunks: the [tokens, vocabulary] logits never exist whole.

The plain path keeps the whole logits tensor, its fp32 copy and log-softmax, and the softmax
gradient of its backward: 4 GiB per fp32 copy for a 4,096-token micro-batch at a 256K vocabulary.
Here the forward pass runs the output layer over `chunk` tokens at a time and keeps only each
token's log-sum-exp; the backward pass makes the logits again, a slice of the vocabulary at a time
for all tokens (as many logits as a forward chunk), and writes each slice's weight gradient once,
so that no weight-sized accumulator is needed and the weight gradient is rounded once, as in the
plain path. The input gradient is summed over the slices in fp32 (or fp64). This is the recompute
scheme of Apple's Cut Cross-Entropy: one more matmul of the output layer than the plain path
(four instead of three), in exchange for holding nothing of the vocabulary size between forward
and backward.

At TP>1 each rank holds a vocabulary range of the weight: the chunk's maximum, its sum of
exponentials and the target's logit are all-reduced over the TP group (as megatron-core's
vocab-parallel cross-entropy does); the backward pass needs no communication, and its input
gradient is this rank's partial sum, which the caller's region entry (`sum_grad_over`, or
`gather_sequence` under sequence parallelism) reduces.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _all_reduce(x: torch.Tensor, op: dist.ReduceOp, group: Any) -> None:
    if group is not None:
        dist.all_reduce(x, op=op, group=group)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, token_weights: torch.Tensor,
                chunk: int, vocab_start: int, group: Any) -> torch.Tensor:
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32 for bf16 and fp32 weights; fp64 stays fp64
        local_vocab = weight.shape[0]
        local = labels - vocab_start
        here = (local >= 0) & (local < local_vocab)
        local = local.clamp(0, local_vocab - 1)
        # Per token: the log-sum-exp (kept for backward), and log Σ exp(z − max) and z_target − max,
        # whose difference is the loss (the max cancels).
        lse = torch.empty(x.shape[0], dtype=acc, device=x.device)
        log_sum = torch.empty_like(lse)
        target = torch.empty_like(lse)
        for start in range(0, x.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = F.linear(x[rows], weight).to(acc)  # a fresh tensor (also when already in `acc`)
            top = logits.amax(dim=-1)
            _all_reduce(top, dist.ReduceOp.MAX, group)
            logits.sub_(top.unsqueeze(-1))
            target[rows] = logits.gather(-1, local[rows].unsqueeze(-1)).squeeze(-1).masked_fill_(~here[rows], 0.0)
            sum_exp = logits.exp_().sum(dim=-1)
            _all_reduce(sum_exp, dist.ReduceOp.SUM, group)
            log_sum[rows] = sum_exp.log_()
            lse[rows] = log_sum[rows] + top
            del logits  # before the next chunk's are made: one chunk's logits at a time
        _all_reduce(target, dist.ReduceOp.SUM, group)  # from the rank whose vocabulary range holds the target
        token_weights = token_weights.to(acc)
        ctx.save_for_backward(x, weight, local, here, token_weights, lse)
        ctx.chunk = chunk
        return ((log_sum - target) * token_weights).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, local, here, token_weights, lse = ctx.saved_tensors
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        tokens, local_vocab = x.shape[0], weight.shape[0]
        # As many logits per slice as a forward chunk holds: `chunk` tokens × the local vocabulary.
        width = min(local_vocab, max(1, math.ceil(ctx.chunk * local_vocab / max(tokens, 1))))
        scale = token_weights * grad.to(lse.dtype)
        grad_x = torch.zeros(x.shape, dtype=lse.dtype, device=x.device) if want_x else None
        grad_w = torch.empty_like(weight) if want_w else None
        for start in range(0, local_vocab, width):
            cols = slice(start, start + width)
            end = min(start + width, local_vocab)
            # d(w · loss)/d logits = w · (softmax − onehot(target)) on this slice of the vocabulary.
            probs = F.linear(x, weight[cols]).to(lse.dtype).sub_(lse.unsqueeze(-1)).exp_()
            hit = here & (local >= start) & (local < end)
            # −1 at the target where the slice holds it (0 added elsewhere): no data-dependent shapes,
            # so the memory planner's fake tensors trace it.
            probs.scatter_add_(-1, (local - start).clamp(0, end - start - 1).unsqueeze(-1),
                               hit.to(probs.dtype).neg().unsqueeze(-1))
            grad_logits = probs.mul_(scale.unsqueeze(-1)).to(x.dtype)
            if want_w:
                torch.mm(grad_logits.t(), x, out=grad_w[cols])
            if want_x:
                grad_x += (grad_logits @ weight[cols]).to(grad_x.dtype)
            del probs, grad_logits  # before the next slice's are made
        grad_x = None if grad_x is None else grad_x.to(x.dtype)
        return grad_x, grad_w, None, None, None, None, None


def chunked_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                 token_weights: torch.Tensor, chunk: int, vocab_start: int = 0,
                                 group: Any = None) -> torch.Tensor:
    """Σ_t token_weights[t] · CE(x[t] Wᵀ, labels[t]), the logits made `chunk` tokens at a time.

    x: [..., h] hidden states (every rank of `group` holds the same tokens); weight: [V_local, h], this
    rank's rows `vocab_start : vocab_start + V_local` of the output layer; labels: [...] vocabulary
    ids (>= 0; give ignored tokens weight 0); token_weights: [...]. Returns a scalar in fp32 (fp64 for
    fp64 inputs).
    Gradients flow to `x` (this rank's partial sum at TP>1) and `weight`; not twice-differentiable.
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: the number of tokens per chunk must be at least 1")
    hidden = x.shape[-1]
    return _ChunkedLinearCrossEntropy.apply(x.reshape(-1, hidden), weight, labels.reshape(-1),
                                            token_weights.reshape(-1), chunk, vocab_start, group)
