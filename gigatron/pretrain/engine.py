"""Model + optimizer + schedule wrapped in a DeepSpeed engine (ZeRO 0-3, or the pipeline engine)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gigatron.checkpoint.consolidated import LogicalCheckpoint
from gigatron.checkpoint.engine_load import load_model_weights, load_optimizer_state
from gigatron.config.schema import Config
from gigatron.models.layers.compile import CompilePlan, apply_compile
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.layers.recompute import RecomputePlan, apply_recompute_config
from gigatron.models.registry import build_model, get_model_spec
from gigatron.objectives import LanguageModelingTask, Task, build_task
from gigatron.parallel.deepspeed_comm import adopt_process_group
from gigatron.parallel.layout import DeepSpeedMPU, ParallelLayout
from gigatron.parallel.zero_buckets import (
    ZERO3_MAX_LIVE_PARAMETERS,
    ZERO3_PERSISTENCE_THRESHOLD,
    zero_bucket_elements,
)
from gigatron.planning.throughput import total_steps
from gigatron.pretrain.numerics import StepGuard
from gigatron.pretrain.optimizer import ClippedAdamW, GuardedAdamW, param_groups
from gigatron.pretrain.schedule import lr_at


@dataclass
class TrainingEngine:
    """What the loop drives: the DeepSpeed engine and the objective."""

    engine: Any  # deepspeed.DeepSpeedEngine or deepspeed.runtime.pipe.PipelineEngine
    task: Task
    factory: LayerFactory
    is_pipeline: bool
    num_params: int  # logical (unsharded) parameter count, from the model spec
    recompute: RecomputePlan  # what this rank recomputes in the backward pass
    compiled: CompilePlan  # what this rank runs through torch.compile
    guard: StepGuard  # asked by the optimizer before each update (numerical faults)

    @property
    def module(self) -> nn.Module:
        """The wrapped model."""
        return self.engine.module


def deepspeed_config(cfg: Config, data_size: int, clip_in_engine: bool, local_parameters: int,
                     device: str = "cpu") -> dict:
    """The DeepSpeed JSON config derived from ours; nothing is left to DeepSpeed's defaults that matters.

    `data_size` counts the ranks that read different samples; DeepSpeed counts CP ranks as data
    parallel too (they average gradients), so its batch arithmetic is scaled by parallel.cp.
    `local_parameters` (this rank's) sizes the ZeRO buckets. On a GPU, ZeRO's gradient reduction
    overlaps the backward pass on its own stream (Megatron-LM's --overlap-grad-reduce); gloo on the
    CPU has no streams to overlap on.
    """
    t, p = cfg.train, cfg.parallel
    bucket = zero_bucket_elements(local_parameters)
    on_gpu = device not in ("cpu", "")
    return {
        "train_batch_size": t.global_batch_size * p.cp,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.global_batch_size // (t.micro_batch_size * data_size),
        "gradient_clipping": t.clip_grad if clip_in_engine else 0.0,
        "zero_optimization": {
            "stage": p.zero_stage,
            "reduce_bucket_size": bucket,
            "allgather_bucket_size": bucket,
            "stage3_prefetch_bucket_size": bucket,
            "stage3_max_live_parameters": ZERO3_MAX_LIVE_PARAMETERS,
            "stage3_param_persistence_threshold": ZERO3_PERSISTENCE_THRESHOLD,
            "overlap_comm": on_gpu and p.zero_stage > 0,
            # Gradients copied into one flat buffer as they are reduced: no fragmentation at scale.
            "contiguous_gradients": True,
        },
        "bf16": {"enabled": t.precision == "bf16"},
        # Our optimizer is torch's AdamW; DeepSpeed only vouches for its own by default.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
        "dump_state": False,
        # DeepSpeed's pipeline splits the activations it sends between stages over the TP ranks,
        # assuming they are equal there; with sequence parallelism each rank holds its own part.
        "pipeline": {"pipe_partitioned": not p.sequence_parallel, "grad_partitioned": not p.sequence_parallel},
    }


def _build_pipeline(cfg: Config, factory: LayerFactory, task: LanguageModelingTask, layout: ParallelLayout
                    ) -> nn.Module:
    from deepspeed.pipe import LayerSpec, PipelineModule

    spec = get_model_spec(type(cfg.model).family)
    layers = [LayerSpec(cls, *args, **kwargs) for cls, args, kwargs in spec.layer_recipes(cfg.model, factory)]
    stage = PipelineModule(layers=layers, topology=layout.deepspeed_topology(), loss_fn=task.loss,
                           partition_method=cfg.parallel.pipeline_partition)
    task.prepare_pipeline(stage)
    return stage


def build_engine(cfg: Config, layout: ParallelLayout, device: str, init_from: LogicalCheckpoint | None = None
                 ) -> TrainingEngine:
    """Build this rank's share of the model, initialise it layout-independently, wrap it in DeepSpeed.

    `init_from` starts from a logical checkpoint (written by any layout): weights, AdamW moments,
    step counters and LR schedule position instead of the seeded initialisation.
    """
    import deepspeed

    spec = get_model_spec(type(cfg.model).family)
    factory = LayerFactory(layout, device="cpu" if device == "cpu" else None)
    task = build_task(spec.task, factory, cfg)
    is_pipeline = layout.pp_size > 1
    # PipelineModule talks through deepspeed.comm, which must adopt our existing torch.distributed group.
    adopt_process_group("gloo" if device == "cpu" else "nccl")
    model = _build_pipeline(cfg, factory, task, layout) if is_pipeline else build_model(cfg.model, factory)
    recompute = apply_recompute_config(model, cfg.train)
    compiled = apply_compile(model, cfg.train.compile, recompute, backend=cfg.train.compile_backend)
    initialize_parameters(model, cfg.train.seed, layout.tp_rank, layout.tp_size)
    if init_from is not None:
        load_model_weights(model, init_from, layout.tp_rank, layout.tp_size)
    model.to(device)

    zero0 = cfg.parallel.zero_stage == 0
    groups = param_groups(model, cfg.train.weight_decay, with_names=zero0)
    guard = StepGuard(cfg.faults, "cpu" if device == "cpu" else device)
    if zero0:
        optimizer: torch.optim.Optimizer = ClippedAdamW(
            groups, cfg.train,
            tp_rank=layout.tp_rank,
            tp_group=layout.tp_group if layout.tp_size > 1 else None,
            pp_group=layout.pp_group if layout.pp_size > 1 else None,
            guard=guard, fused=device == "cpu",
        )
    else:
        optimizer = GuardedAdamW(groups, cfg.train, guard=guard, fused=device == "cpu")
    steps = total_steps(cfg)
    base_lr = cfg.train.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, steps, cfg.train) / base_lr)
    ds_config = deepspeed_config(cfg, layout.data_size, clip_in_engine=not zero0,
                                 local_parameters=sum(p.numel() for p in model.parameters()), device=device)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config,
        mpu=None if is_pipeline else DeepSpeedMPU(layout),
    )
    if init_from is not None:
        load_optimizer_state(engine, init_from, layout.tp_rank, layout.tp_size)
    # DeepSpeed reads `.overflow` of the optimizer it holds: a rejected step then neither counts as
    # applied nor advances the LR schedule.
    guard.overflow_target = engine.optimizer
    if zero0 and not is_pipeline and layout.data_size * layout.cp_size == 1:
        # No replica to average gradients with: DeepSpeed's fallback all-reduce would flatten every
        # gradient into buckets, all-reduce them over this one rank, scale them by 1/1 and copy them
        # back (2.5% of the ~30M GPT's step on 2 cores; benchmarks/trainer_overhead.py).
        engine.enable_backward_allreduce = False
    if is_pipeline:
        # The pipeline engine runs forward, backward and step in one call: the last stage's summed
        # micro-batch losses are what the guard judges.
        guard.loss_source = lambda: ((engine.total_loss, engine.micro_batches)
                                     if engine.is_last_stage() and engine.total_loss is not None else None)
    return TrainingEngine(engine=engine, task=task, factory=factory, is_pipeline=is_pipeline,
                          num_params=spec.num_params(cfg.model), recompute=recompute, compiled=compiled,
                          guard=guard)
