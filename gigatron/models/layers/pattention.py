"""Pattention (TokenFormer, Wang et al. 2024): a linear map replaced by attention over parameter tokens.

    O = Θ(X · K_Pᵀ) · V_P,  K_P: [n, d_in] key tokens,  V_P: [n, d_out] value tokens

Θ normalises each row of the n scores and scales it by √s (or s), where s is `scale_tokens`
(normally n; kept at its old value when a model grows with function preservation):
    l2_norm_gelu  GeLU(A / ‖A‖₂ · √s)          (the reference implementation's default)
    gelu_l2_norm  GeLU(A) / ‖GeLU(A)‖₂ · √s
    softmax_n     exp(A) / ‖exp(A)‖₁ · s

exactly as the authors' `nonlinear_norm_func`: no epsilon under the norms (a row of all-zero
scores, which only an all-zero input produces, gives NaN there as here).

Under tensor parallelism each rank holds n/tp key and value tokens; the row norm over all n tokens
is summed across ranks (autograd-aware), and the partial outputs are summed like a row-parallel
linear, so every rank computes what TP=1 computes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Normalization = Literal["l2_norm_gelu", "gelu_l2_norm", "softmax_n"]
NORMALIZATIONS: tuple[str, ...] = ("l2_norm_gelu", "gelu_l2_norm", "softmax_n")


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is also a sum: every rank uses the total with its own tokens
    only, so the gradient of the total is the sum of the ranks' gradients. (Megatron's
    reduce_from_tensor_model_parallel_region passes the gradient through unchanged, which is right
    only when the rest of the computation is replicated.)"""

    @staticmethod
    def forward(ctx, local: torch.Tensor, group) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        total = local.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class Pattention(nn.Module):
    """Token-parameter attention from `d_in` to `d_out` features over `n_tokens` parameter tokens.

    Built by `LayerFactory.pattention`: `key_tokens`/`value_tokens` hold this TP rank's tokens and
    `tp_group` is None at TP=1.
    """

    def __init__(self, key_tokens: nn.Parameter, value_tokens: nn.Parameter, normalization: Normalization,
                 scale_tokens: int, tp_group=None, gather_input: bool = False, scatter_output: bool = False) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
        self.key_tokens = key_tokens
        self.value_tokens = value_tokens
        self.normalization = normalization
        self.scale_tokens = scale_tokens
        self.tp_group = tp_group
        # Sequence parallelism: the input is this rank's part of the sequence (gathered here), and/or
        # the output's sum over ranks is left as sequence parts (sequence_parallel.py).
        self.gather_input, self.scatter_output = gather_input, scatter_output

    def _sum_over_ranks(self, local: torch.Tensor) -> torch.Tensor:
        if self.tp_group is None:
            return local
        return _SumOverRanks.apply(local, self.tp_group)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Θ(X K_Pᵀ) for this rank's tokens: [..., n_local]."""
        if self.gather_input:
            from gigatron.models.layers.sequence_parallel import gather_linear

            a = gather_linear(x, self.key_tokens, None, self.tp_group)
        else:
            if self.tp_group is not None:
                from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

                # The group is passed: without it megatron-core warns on rank 0 only, which under
                # train.compile is a graph break on one rank and a different collective order (a hang).
                x = copy_to_tensor_model_parallel_region(x, group=self.tp_group)  # its gradient is summed
            a = x @ self.key_tokens.t()
        # Norms in fp32 at least (bf16 sums of n squares lose digits); fp64 stays fp64.
        wide = a.to(torch.promote_types(a.dtype, torch.float32))
        if self.normalization == "l2_norm_gelu":
            norm = self._sum_over_ranks(wide.pow(2).sum(-1, keepdim=True)).sqrt()
            return F.gelu((wide / norm * math.sqrt(self.scale_tokens)).to(a.dtype))
        if self.normalization == "gelu_l2_norm":
            g = F.gelu(wide)
            norm = self._sum_over_ranks(g.pow(2).sum(-1, keepdim=True)).sqrt()
            return (g / norm * math.sqrt(self.scale_tokens)).to(a.dtype)
        # softmax_n: shift by the row maximum over all ranks (no gradient needed: it cancels).
        peak = wide.detach().amax(-1, keepdim=True)
        if self.tp_group is not None:
            import torch.distributed as dist

            dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=self.tp_group)
        e = (wide - peak).exp()
        total = self._sum_over_ranks(e.sum(-1, keepdim=True))
        return (e / total * self.scale_tokens).to(a.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scores(x) @ self.value_tokens
        if self.scatter_output:
            from gigatron.models.layers.sequence_parallel import scatter_sequence

            return scatter_sequence(out, self.tp_group)
        if self.tp_group is not None:
            from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

            out = reduce_from_tensor_model_parallel_region(out, group=self.tp_group)
        return out

    def extra_repr(self) -> str:
        return (f"tokens={self.key_tokens.shape[0]} (this rank), d_in={self.key_tokens.shape[1]}, "
                f"d_out={self.value_tokens.shape[1]}, {self.normalization}, scale_tokens={self.scale_tokens}")
