"""AdamW with parameter groups, and global-norm clipping for the layouts DeepSpeed leaves unclipped."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from gigatron.config.schema import TrainConfig
from gigatron.models.layers.init import NO_DECAY_ATTR
from gigatron.pretrain.numerics import StepGuard, grads_nonfinite


def param_groups(model: nn.Module, weight_decay: float, with_names: bool = False) -> list[dict]:
    """Up to two groups: matrices decay; norms, biases (ndim < 2) and parameters marked
    `no_weight_decay` (e.g. SSM A_log, D, dt_bias) do not, as in Megatron and mamba_ssm.

    `with_names` adds torch's `param_names` to each group, so that the optimizer's saved state says
    which parameter each moment belongs to (checkpoint conversion reads it).
    """
    groups = {True: ([], []), False: ([], [])}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or getattr(param, NO_DECAY_ATTR, False)
        groups[skip][0].append(param)
        groups[skip][1].append(name)
    result = [
        {"params": groups[False][0], "weight_decay": weight_decay, "name": "decay"},
        {"params": groups[True][0], "weight_decay": 0.0, "name": "no_decay"},
    ]
    if with_names:
        result[0]["param_names"], result[1]["param_names"] = groups[False][1], groups[True][1]
    # A model without norms or biases (TokenFormer) has no no-decay parameter; an empty group would
    # be dropped by DeepSpeed but not by the LR scheduler, which then disagree on the group count.
    return [group for group in result if group["params"]]


def global_grad_norm(params: Iterable[nn.Parameter], tp_rank: int, tp_group=None, pp_group=None) -> torch.Tensor:
    """2-norm of all gradients of the model across TP shards and pipeline stages.

    Replicated parameters (norm weights) are counted on TP rank 0 only; TP-sharded ones on every
    rank, then summed over the TP group: the norm of the logical, unsharded gradient.
    """
    grads = [p.grad.detach() for p in params
             if p.grad is not None and (tp_rank == 0 or getattr(p, "tensor_model_parallel", False))]
    squares = torch.zeros((), dtype=torch.float32)
    if grads:  # one fused pass per device, accumulated in fp32, and no squared copy of any gradient
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
        squares = torch.stack([n.to(grads[0].device) for n in norms]).pow(2).sum()
    for group in (tp_group, pp_group):
        if group is not None and dist.get_world_size(group) > 1:
            dist.all_reduce(squares, group=group)
    return squares.sqrt()


# `fused`: torch's fused AdamW (one kernel over all tensors), which the engine asks for on the CPU,
# where torch's default is a Python loop over parameters: 2.8x slower on the ~30M GPT (50.8 -> 18.1
# ms a step, 2 cores), with the same update to ~1 ulp. CUDA keeps torch's default (foreach), whose
# one temporary the memory planner counts; fused there waits for a GPU to be measured. Passed as
# `fused or None`: an explicit fused=False would also turn torch's foreach default off.


class GuardedAdamW(torch.optim.AdamW):
    """AdamW that asks a StepGuard (pretrain/numerics.py) before updating: the optimizer DeepSpeed's
    ZeRO stages 1-3 step on each rank's partition, after they reduced and clipped the gradients."""

    def __init__(self, groups: list[dict], train: TrainConfig, guard: StepGuard | None = None,
                 fused: bool = False) -> None:
        super().__init__(groups, lr=train.lr, betas=train.betas, eps=train.eps, weight_decay=train.weight_decay,
                         fused=fused or None)
        self.guard = guard

    @torch.no_grad()
    def step(self, closure=None):
        if self.guard is not None and self.guard.decide(self._nonfinite()):
            return None
        return super().step(closure)

    def _nonfinite(self) -> bool:
        # ZeRO computed the global gradient norm before stepping group by group; a group's own
        # gradients are all this step can see (the others are assigned when their turn comes).
        norm = getattr(self.guard.overflow_target, "_global_grad_norm", None)
        if norm is not None:
            return not math.isfinite(float(norm))
        return grads_nonfinite(p for group in self.param_groups for p in group["params"])


class ClippedAdamW(torch.optim.AdamW):
    """AdamW that clips by the global gradient norm before each step and records the norm.

    DeepSpeed clips fp32 ZeRO-0 runs without exposing the norm; ZeRO >= 1 clips and reports it
    itself, so this is used only for stage 0. DeepSpeed reads `_global_grad_norm` after the step.
    With a `guard`, a step the guard rejects (pretrain/numerics.py) changes nothing.
    """

    def __init__(self, groups: list[dict], train: TrainConfig, tp_rank: int = 0, tp_group=None,
                 pp_group=None, guard: StepGuard | None = None, fused: bool = False) -> None:
        super().__init__(groups, lr=train.lr, betas=train.betas, eps=train.eps, weight_decay=train.weight_decay,
                         fused=fused or None)
        self.max_norm = train.clip_grad
        self._tp_rank, self._tp_group, self._pp_group = tp_rank, tp_group, pp_group
        self._global_grad_norm: float | None = None
        self.guard = guard

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        norm = global_grad_norm(params, self._tp_rank, self._tp_group, self._pp_group)
        self._global_grad_norm = float(norm)
        if self.guard is not None and self.guard.decide(not math.isfinite(self._global_grad_norm)):
            return None
        if self.max_norm > 0:
            coef = (self.max_norm / (norm + 1e-6)).clamp(max=1.0)
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, coef.to(grads[0].device))
        return super().step(closure)
