"""Starting a run's engine from a logical checkpoint written by any layout.

Each rank reads the logical fp32 tensors one at a time and keeps its own TP shard; ZeRO then
partitions them. Weights go into the model before DeepSpeed wraps it (so ZeRO-3 partitions the
checkpoint's values, and ZeRO-1/2 copy them into their fp32 master partitions); master weights and
AdamW moments are then written into the optimizer's partitions at the addresses DeepSpeed keeps
for each parameter. Nothing here changes with the layout of the checkpoint, only with ours.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from gigatron.checkpoint.consolidated import LogicalCheckpoint
from gigatron.checkpoint.native import MOMENTS


def _step_tensor(step: int) -> torch.Tensor:
    # torch's AdamW keeps `step` as a float32 scalar tensor (non-capturable mode).
    return torch.tensor(float(step), dtype=torch.float32)


@torch.no_grad()
def load_model_weights(model: nn.Module, ckpt: LogicalCheckpoint, tp_rank: int, tp_size: int) -> None:
    """Copy this rank's shard of every checkpoint weight into `model` (a full model or one pipeline stage)."""
    params = dict(model.named_parameters())
    missing = sorted(set(params) - ckpt.stored_names())
    if missing:
        raise ValueError(f"{ckpt.path}: holds no weights for {', '.join(missing[:8])} of this model; "
                         "was it written for a different model config?")
    for name, param in params.items():
        plan = ckpt.plans[name]
        if tuple(param.shape) != plan.shard_shape(tp_size):
            raise ValueError(f"{ckpt.path}: {name} has logical shape {plan.shape}, whose TP={tp_size} shard "
                             f"{plan.shard_shape(tp_size)} does not fit this model's {tuple(param.shape)}")
        param.copy_(plan.take_shard(ckpt.tensor(name), tp_rank, tp_size).to(param.dtype))


def _names(module: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in module.named_parameters()}


@torch.no_grad()
def _load_zero0(optimizer, module: nn.Module, ckpt: LogicalCheckpoint, step: int, tp_rank: int, tp_size: int
                ) -> None:
    names = _names(module)
    if hasattr(optimizer, "fp32_groups") and hasattr(optimizer, "fp16_groups"):
        # bf16/fp16 at stage 0: DeepSpeed's unfused wrapper steps fp32 copies of the model's weights.
        pairs = [(lp, hp) for lp_group, hp_group in zip(optimizer.fp16_groups, optimizer.fp32_groups, strict=True)
                 for lp, hp in zip(lp_group, hp_group, strict=True)]
        inner = optimizer.optimizer
    else:
        pairs = [(p, p) for group in optimizer.param_groups for p in group["params"]]
        inner = optimizer
    for model_param, stepped in pairs:
        plan = ckpt.plans[names[id(model_param)]]
        stepped.copy_(plan.take_shard(ckpt.tensor(plan.name), tp_rank, tp_size).to(stepped.dtype))
        state = {"step": _step_tensor(step)}
        for key in MOMENTS:
            state[key] = plan.take_shard(ckpt.tensor(plan.name, key), tp_rank, tp_size).to(stepped).clone()
        inner.state[stepped] = state


@torch.no_grad()
def _load_zero12(zero, module: nn.Module, ckpt: LogicalCheckpoint, step: int, tp_rank: int, tp_size: int) -> None:
    names = _names(module)
    base = zero.optimizer
    # ZeRO-1/2 and DeepSpeed's bf16 optimizer (used for bf16 at stage 0) keep the same structure.
    flats = getattr(zero, "single_partition_of_fp32_groups", None) or zero.fp32_groups_flat_partition
    lp_groups = getattr(zero, "bit16_groups", None) or zero.bf16_groups
    for i, flat in enumerate(flats):
        state = {"step": _step_tensor(step), **{key: torch.zeros_like(flat) for key in MOMENTS}}
        targets = {None: flat, **state}
        for param in lp_groups[i]:
            mapping = getattr(param, "_hp_mapping", None)
            if mapping is None:
                continue  # no piece of this parameter in this DP rank's partition
            plan = ckpt.plans[names[id(param)]]
            hp, lp = mapping.get_hp_fragment_address(), mapping.lp_fragment_address
            for key in (None, *MOMENTS):
                source = plan.take_shard(ckpt.tensor(plan.name, key), tp_rank, tp_size).reshape(-1)
                targets[key].narrow(0, hp.start, hp.numel).copy_(source.narrow(0, lp.start, lp.numel))
        base.state[flat] = state


@torch.no_grad()
def _load_zero3(zero, module: nn.Module, ckpt: LogicalCheckpoint, step: int, tp_rank: int, tp_size: int) -> None:
    names = _names(module)
    dp_rank = dist.get_rank(group=zero.dp_process_group)
    base = zero.optimizer
    for i, flat in enumerate(zero.fp32_partitioned_groups_flat):
        state = {"step": _step_tensor(step), **{key: torch.zeros_like(flat) for key in MOMENTS}}
        targets = {None: flat, **state}
        for param in zero.fp16_groups[i]:
            plan = ckpt.plans[names[id(param)]]
            _, offset, count = zero.grad_position[zero.get_param_id(param)]
            per_rank = param.ds_tensor.ds_numel  # ZeRO-3 pads every parameter to a multiple of the DP size
            start = dp_rank * per_rank
            take = max(0, min(count, param.ds_numel - start))  # ds_numel: this TP rank's shard
            for key in (None, *MOMENTS):
                if take:
                    source = plan.take_shard(ckpt.tensor(plan.name, key), tp_rank, tp_size).reshape(-1)
                    targets[key].narrow(0, offset, take).copy_(source.narrow(0, start, take))
        base.state[flat] = state


def load_optimizer_state(engine, ckpt: LogicalCheckpoint, tp_rank: int, tp_size: int) -> None:
    """Master weights, AdamW moments and step counter from `ckpt` into a DeepSpeed engine's optimizer.

    Also sets the LR scheduler to the checkpoint's step, so the schedule continues where it was.
    """
    module = engine.module
    check = {name for name, _ in module.named_parameters()} - ckpt.stored_names()
    if check:
        raise ValueError(f"{ckpt.path}: no state for {sorted(check)[:8]}")
    step = int(ckpt.trainer_state["step"])
    if ckpt.has_optimizer:
        optimizer_step = ckpt.optimizer_step
        optimizer = engine.optimizer
        if hasattr(optimizer, "fp32_partitioned_groups_flat"):
            _load_zero3(optimizer, module, ckpt, optimizer_step, tp_rank, tp_size)
        elif hasattr(optimizer, "single_partition_of_fp32_groups") or hasattr(optimizer, "fp32_groups_flat_partition"):
            _load_zero12(optimizer, module, ckpt, optimizer_step, tp_rank, tp_size)
        else:
            _load_zero0(optimizer, module, ckpt, optimizer_step, tp_rank, tp_size)
    scheduler = engine.lr_scheduler
    scheduler.last_epoch = step
    scheduler._step_count = step + 1
    lrs = [base_lr * fn(step) for base_lr, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(engine.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs
    engine.global_steps = step
    engine.global_samples = step * engine.train_batch_size()

