"""Per-rank memory of a training run, planned from shapes: what `torch.cuda.max_memory_allocated` (or
the live tensor bytes on the CPU) will report, plus the framework's own reserve.

Activations, working tensors (logits and loss buffers, recompute, collectives' outputs) and the
gradients made in the backward pass are counted by stepping each pipeline stage under FakeTensorMode
(`stage_trace.py`). Weights, gradient buffers and optimizer states follow what DeepSpeed allocates
for the precision and ZeRO stage (`state_bytes` below, read from DeepSpeed 0.19's optimizers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from gigatron.config.schema import Config, HardwareConfig
from gigatron.parallel.zero_buckets import ZERO3_MAX_LIVE_PARAMETERS, zero_bucket_elements
from gigatron.planning.stage_trace import StageTrace, trace_stage
from gigatron.planning.throughput import micro_batches_per_step

GiB = 2**30

@dataclass(frozen=True)
class MemoryPlan:
    """One rank's planned peak, in bytes, with its parts."""

    stage: int  # the pipeline stage of the rank planned
    local_parameters: int  # parameters held by a rank of this stage (its TP shard, before ZeRO)
    micro_batches_in_flight: int  # activations held at once under DeepSpeed's 1F1B schedule
    parameters: int  # weights in the training precision (ZeRO-3: the rank's partition + gathered ones)
    gradients: int  # gradients: full in the training precision (ZeRO 0/1) or the rank's partition (2/3)
    optimizer: int  # fp32 master weights and AdamW's two moments (partitioned by ZeRO 1-3)
    activations: int  # tensors saved for backward by the micro-batches in flight
    working: int  # the rest of the peak: logits and loss buffers, recompute, collective outputs, temporaries
    communication: int  # ZeRO buckets, pipeline send/receive buffers
    overhead: int  # what the allocator statistics do not show: CUDA context, NCCL, fragmentation
    # The peak of tensor bytes: what max_memory_allocated (GPU) or LiveTensorBytes (CPU) reports. It
    # is less than the parts' sum, which are each at their own largest: gradients and buckets peak
    # late in the backward pass and at the optimizer step, after most activations are freed.
    allocated: int
    peak_phase: str  # "backward" or "optimizer step": where the peak comes

    @property
    def total(self) -> int:
        """Peak bytes the rank needs on its device."""
        return self.allocated + self.overhead

    def parts(self) -> dict[str, int]:
        """The breakdown, in display order."""
        names = ["parameters", "gradients", "optimizer", "activations", "working", "communication", "overhead"]
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter DeepSpeed holds for one precision and ZeRO stage, over the DP size `d`."""

    weights: float  # resident weights (ZeRO-3: the partition; the gathered ones are added apart)
    weights_partitioned: bool
    gradients_dynamic: float  # gradients made whole in backward and kept until the step (ZeRO 0/1)
    gradients_static: float  # per parameter, divided by d when `gradients_partitioned`
    gradients_partitioned: bool
    optimizer: float  # divided by d when `optimizer_partitioned`
    optimizer_partitioned: bool


def state_bytes(precision: str, zero_stage: int, pipeline: bool) -> StateBytes:
    """DeepSpeed's per-parameter state (our config leaves grad_accum_dtype at the model dtype).

    fp32, ZeRO 0: torch AdamW on the module: weights 4, gradients 4, moments 8.
    bf16, ZeRO 0: FP16_Optimizer (bf16 flavour) keeps a whole fp32 master copy (4) with the moments;
    the pipeline engine uses BF16_Optimizer instead, which partitions the master and moments over DP
    but keeps a whole fp32 gradient accumulator (4).
    ZeRO 1/2 (stage_1_and_2): the fp32 master partition (4/d) and moments (8/d); ZeRO-1 keeps the
    whole gradients until the step, ZeRO-2 moves them into a partition as the backward makes them;
    both hold the partition's fp32 gradient for the step (4/d), plus bf16's reduced partition (2/d).
    ZeRO-3: weights partitioned too.
    """
    w = 2.0 if precision == "bf16" else 4.0
    extra_partition = 2.0 if precision == "bf16" else 0.0  # the reduced bf16 partition beside the fp32 one
    if zero_stage == 0:
        if precision == "bf16" and pipeline:
            return StateBytes(w, False, w, 4.0, False, 12.0, True)
        master = 4.0 if precision == "bf16" else 0.0
        return StateBytes(w, False, w, 0.0, False, 8.0 + master, False)
    if zero_stage == 1:
        return StateBytes(w, False, w, 4.0, True, 12.0, True)
    return StateBytes(w, zero_stage == 3, 0.0, 4.0 + extra_partition, True, 12.0, True)


def _ceil_div(a: float, b: int) -> int:
    return int(-(-a // b))


def data_parallel_size(cfg: Config) -> int:
    """Ranks that ZeRO partitions over: data-parallel times context-parallel (CP ranks average
    gradients like DP ones, and DeepSpeed is handed that group)."""
    return (cfg.parallel.dp or 1) * cfg.parallel.cp


def plan_stage(cfg: Config, trace: StageTrace, micro_batches: int, device: str = "cuda",
               overhead: int = 0) -> MemoryPlan:
    """The plan of a rank of pipeline stage `trace.stage` from its trace and DeepSpeed's state bytes."""
    p = cfg.parallel
    d = data_parallel_size(cfg)
    state = state_bytes(cfg.train.precision, p.zero_stage, p.pp > 1)
    n = trace.parameters
    in_flight = stage_in_flight(cfg, trace.stage, micro_batches)
    if state.weights_partitioned:
        large = n - trace.small_parameters
        gathered = min(large, ZERO3_MAX_LIVE_PARAMETERS)
        weights = (_ceil_div(large, d) + trace.small_parameters + gathered) * state.weights
    else:
        weights = n * state.weights
    dynamic_gradients = int(n * state.gradients_dynamic)
    static_gradients = int(_ceil_div(n, d) * state.gradients_static if state.gradients_partitioned
                           else n * state.gradients_static)
    optimizer = int(_ceil_div(n, d) * state.optimizer if state.optimizer_partitioned else n * state.optimizer)
    # ZeRO-2/3's contiguous reduce bucket, in the gradients' dtype; DeepSpeed makes it at the first
    # reduction and frees it with the reduced partition after the step, when activations are gone.
    bucket = zero_bucket_elements(n) * int(state.weights) if p.zero_stage >= 2 else 0
    # DeepSpeed's pipeline keeps each buffer's stage output (the last stage: its logits) until the
    # buffer is reused, beyond the micro-batches in flight.
    pipe_buffers = (max(2, in_flight) - 1) * trace.output_bytes if p.pp > 1 else 0
    activations = in_flight * trace.saved
    backward_peak = trace.peak + (in_flight - 1) * trace.saved + pipe_buffers
    # The optimizer step runs after the activations are gone; on CUDA torch's AdamW runs "foreach",
    # which makes one temporary the size of what it updates.
    updated = _ceil_div(n, d) if state.optimizer_partitioned else n
    step_peak = dynamic_gradients + static_gradients + bucket + (4 * updated if device == "cuda" else 0)
    kept = dynamic_gradients if trace.gradients_in_peak else 0
    resident = int(weights) + optimizer
    if p.zero_stage == 3:  # ZeRO-3 allocates its gradient partition and reduce bucket up front
        resident += static_gradients + bucket
        step_peak -= static_gradients + bucket
    return MemoryPlan(stage=trace.stage, local_parameters=n, micro_batches_in_flight=in_flight,
                      parameters=int(weights), gradients=dynamic_gradients + static_gradients,
                      optimizer=optimizer, activations=activations,
                      working=max(0, trace.peak - trace.saved - kept), communication=bucket + pipe_buffers,
                      overhead=overhead, allocated=resident + max(backward_peak, step_peak),
                      peak_phase="backward" if backward_peak >= step_peak else "optimizer step")


def stage_in_flight(cfg: Config, stage: int, micro_batches: int) -> int:
    """Micro-batches whose activations stage `stage` holds at once under DeepSpeed's 1F1B TrainSchedule."""
    return max(1, min(cfg.parallel.pp - stage, micro_batches))


def plan_memory(cfg: Config, device: str = "cuda", overhead: int = 0, stages: list[int] | None = None
                ) -> list[MemoryPlan]:
    """The plans of pipeline stages `stages` (default all) of run `cfg` (with `parallel.dp` set).

    `device` is where the run will train ("cuda" or "cpu"): it decides the optimizer's temporaries
    and whether the Mamba mixers keep what mamba-ssm's kernels keep (cuda) or the PyTorch path's.
    `overhead` is added to each rank as the framework's reserve. A stage after the first is traced
    with the hidden states the stage before it sends on (they have the same shape at every stage).
    """
    micro_batches = micro_batches_per_step(cfg)
    keeps_gradients = cfg.parallel.zero_stage < 2
    # With accumulation, a second micro-batch runs beside the first one's gradients.
    stepped = 2 if micro_batches > 1 and keeps_gradients else 1
    plans = []
    shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None
    for stage in stages if stages is not None else range(cfg.parallel.pp):
        if stage > 0 and shape is None:
            first = _cached_trace(cfg, 0, None, None, keeps_gradients, stepped, device)
            shape, dtype = first.output_shape, first.output_dtype
        trace = _cached_trace(cfg, stage, shape, dtype, keeps_gradients, stepped, device)
        shape, dtype = trace.output_shape, trace.output_dtype
        plans.append(plan_stage(cfg, trace, micro_batches, device, overhead))
    return plans


# Traces by everything they depend on: a layout search plans the same shapes under several ZeRO stages.
_TRACES: dict[tuple, StageTrace] = {}


def _cached_trace(cfg: Config, stage: int, shape, dtype, keeps_gradients: bool, stepped: int, device: str
                  ) -> StageTrace:
    # The ZeRO stage enters only through `keeps_gradients`; the hardware and paths not at all.
    shaped = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, zero_stage=0),
                                 hardware=HardwareConfig(), output_dir="")
    key = (repr(shaped), stage, shape, dtype, keeps_gradients, stepped, device)
    if key not in _TRACES:
        _TRACES[key] = trace_stage(cfg, stage, shape, dtype, zero_keeps_gradients=keeps_gradients,
                                   micro_batches=stepped, device=device)
    return _TRACES[key]
