"""One pipeline stage of a run, built and stepped under FakeTensorMode: its activation bytes counted, not
estimated.

The stage is built exactly as the trainer builds it (layer factory for the rank's TP/SP/CP position,
DeepSpeed's PipelineModule partitioning, the run's recompute hooks, the training precision) on a fake
process group (`fake_world.py`), and one or two micro-batches of the run's shape go forward and
backward through the objective's loss. Nothing is allocated: a fake tensor has a shape, a dtype and
a storage size, which `LiveTensorBytes` and `saved_for_backward` count.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import torch
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

from gigatron.config.errors import ConfigError
from gigatron.config.schema import Config
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.recompute import apply_recompute_config
from gigatron.models.registry import build_model, get_model_spec
from gigatron.objectives import build_task
from gigatron.parallel.deepspeed_comm import adopt_process_group
from gigatron.parallel.zero_buckets import ZERO3_PERSISTENCE_THRESHOLD
from gigatron.planning.activations import saved_for_backward_bytes
from gigatron.planning.fake_world import fake_process_layout
from gigatron.planning.image_batches import fake_condition_draws, image_batch
from gigatron.planning.kernel_shapes import cuda_kernel_shapes
from gigatron.planning.measure import LiveTensorBytes


class UnplannableModel(ConfigError):
    """The model's forward reads tensor values, which a plan from shapes does not have."""


@dataclass(frozen=True)
class StageTrace:
    """What one micro-batch costs one rank of a pipeline stage, in bytes (parameters excluded)."""

    stage: int
    parameters: int  # elements of the stage's parameters on this rank (its TP shard)
    small_parameters: int  # elements in tensors ZeRO-3 keeps whole (below its persistence threshold)
    saved: int  # activations kept for backward by one micro-batch (what each in-flight micro-batch holds)
    peak: int  # the largest live total during forward + backward of the micro-batches stepped: saved
    #          activations, working tensors (logits, loss), the gradients of the stage, recompute buffers
    gradients_in_peak: bool  # whether the gradients were kept in `peak` (ZeRO 0/1) or dropped (2/3)
    # One micro-batch's output of the stage's layers (the last stage's: the logits, before the loss):
    # what the next stage receives, and what DeepSpeed's pipeline buffers hold per micro-batch.
    output_shape: tuple[int, ...]
    output_dtype: torch.dtype

    @property
    def output_bytes(self) -> int:
        """Bytes of one micro-batch's stage output."""
        return math.prod(self.output_shape) * self.output_dtype.itemsize


def _training_dtype(cfg: Config) -> torch.dtype:
    return torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32


def _world_size(cfg: Config) -> int:
    p = cfg.parallel
    return p.tp * p.pp * p.cp * (p.dp or 1)


def _stage_rank(cfg: Config, stage: int) -> int:
    """The global rank at TP, CP and DP position 0 of pipeline stage `stage` (PP is the slowest axis)."""
    return stage * (_world_size(cfg) // cfg.parallel.pp)


@contextlib.contextmanager
def _visible_fake_positions() -> Iterator[None]:
    """Blockwise (ring) attention pairs query and key runs by reading token positions, which fake
    tensors do not hold: treat each block as one fully visible pair instead, and send a ring step's
    keys as one chunk (not in overlapped pieces: thousands of fake steps at 1M tokens). What attention
    saves for backward depends on neither, and the fused kernel it runs holds no scores."""
    from gigatron.models.layers import blockwise_attention as blockwise
    from gigatron.models.layers.cp import ring

    def every_pair(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, key_limit: int | None):
        yield (0, q_pos.numel()), (0, k_pos.numel()), "all"

    with mock.patch.object(blockwise, "_pairs", every_pair), \
            mock.patch.object(ring, "_chunks", lambda length: [(0, length)]):
        yield


def _stage_model(cfg: Config, factory: LayerFactory, task, stage: int) -> nn.Module:
    spec = get_model_spec(type(cfg.model).family)
    if cfg.parallel.pp == 1:
        return build_model(cfg.model, factory)
    from deepspeed.pipe import LayerSpec, PipelineModule

    # PipelineModule asks deepspeed.comm for ranks; it adopts the (fake) torch.distributed group.
    adopt_process_group("gloo")
    layers = [LayerSpec(cls, *args, **kwargs) for cls, args, kwargs in spec.layer_recipes(cfg.model, factory)]
    # It reads LOCAL_RANK and moves itself to that device, which fake parameters need not (and cannot);
    # it prints its partition, which would mix into a plan's output.
    with (contextlib.redirect_stdout(io.StringIO()), mock.patch.dict(os.environ, {"LOCAL_RANK": os.environ.get("LOCAL_RANK", "0")}),
          mock.patch.object(PipelineModule, "to", lambda self, *args, **kwargs: self)):
        module = PipelineModule(layers=layers, topology=factory.layout.deepspeed_topology(), loss_fn=task.loss,
                                partition_method=cfg.parallel.pipeline_partition)
    if hasattr(task, "prepare_pipeline"):
        task.prepare_pipeline(module)
    return module


def trace_stage(cfg: Config, stage: int, input_shape: tuple[int, ...] | None = None,
                input_dtype: torch.dtype | None = None, zero_keeps_gradients: bool = True,
                micro_batches: int = 1, device: str = "cpu") -> StageTrace:
    """Build pipeline stage `stage` of run `cfg` for its first rank and step `micro_batches` (1 or 2)
    micro-batches through it under FakeTensorMode.

    A stage after the first takes a tensor of `input_shape`/`input_dtype` (the previous stage's
    output). With `zero_keeps_gradients` false (ZeRO-2/3 move each gradient into a bucket as it is
    made) the parameters' gradients are dropped as soon as they are accumulated. `device="cuda"`
    counts the Mamba mixers as mamba-ssm's kernels keep their tensors (`kernel_shapes.py`).
    """
    spec = get_model_spec(type(cfg.model).family)
    dtype = _training_dtype(cfg)
    last = stage == cfg.parallel.pp - 1
    with (fake_process_layout(cfg.parallel, _world_size(cfg), _stage_rank(cfg, stage)) as layout,
          _visible_fake_positions(), cuda_kernel_shapes() if device == "cuda" else contextlib.nullcontext(),
          FakeTensorMode(allow_non_fake_inputs=True)):
        factory = LayerFactory(layout, device="cpu", params_dtype=dtype)
        task = build_task(spec.task, factory, cfg)
        if hasattr(task, "draw"):
            fake_condition_draws(task)
        model = _stage_model(cfg, factory, task, stage)
        apply_recompute_config(model, cfg.train)
        params = [p for p in model.parameters() if p.requires_grad]
        if not zero_keeps_gradients:
            for p in params:
                p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))

        layer_outputs: list[torch.Tensor] = []

        def micro_batch_loss() -> torch.Tensor:
            if stage == 0:
                inputs, labels = _batch(cfg, task, spec)
            else:
                inputs = torch.zeros(input_shape, dtype=input_dtype, requires_grad=True)
                labels = _batch(cfg, task, spec)[1]
            if spec.task != "lm" or cfg.parallel.pp == 1:
                return _forward_loss(cfg, task, model, inputs, labels)
            out = model(inputs)
            layer_outputs.append(out)
            return task.loss(out, labels) if last else out

        def backward(out: torch.Tensor) -> None:
            # A stage before the last receives its output's gradient from the next stage.
            out.backward() if out.dim() == 0 else out.backward(torch.zeros_like(out))

        try:
            with LiveTensorBytes() as live:
                # The first micro-batch's forward is also where the saved activations are counted.
                outputs: list[torch.Tensor] = []
                saved = saved_for_backward_bytes(lambda: outputs.append(micro_batch_loss()), exclude=params)
                backward(outputs[0])
                for _ in range(micro_batches - 1):
                    outputs.append(micro_batch_loss())
                    backward(outputs[-1])
        except DataDependentOutputException as exc:
            raise UnplannableModel(
                f"model.family={type(cfg.model).family} cannot be planned from shapes: its forward reads "
                f"tensor values ({exc.func}), e.g. to pack images into rows; plan it by measuring a short "
                "run with logging.memory_trace=true instead") from exc
        output = layer_outputs[-1] if layer_outputs else outputs[-1]
        return StageTrace(stage=stage, parameters=sum(p.numel() for p in params),
                          small_parameters=sum(p.numel() for p in params if p.numel() < ZERO3_PERSISTENCE_THRESHOLD),
                          saved=saved,
                          peak=live.peak, gradients_in_peak=zero_keeps_gradients,
                          output_shape=tuple(output.shape), output_dtype=output.dtype)


def _batch(cfg: Config, task, spec) -> tuple:
    """(inputs, labels) of one micro-batch for `task`, as the loader would hand them to this rank."""
    b = cfg.train.micro_batch_size
    if spec.task == "lm":
        return task.split_local(torch.zeros(b, cfg.data.seq_len + 1, dtype=torch.long))
    return image_batch(cfg, b), None


def _forward_loss(cfg: Config, task, model: nn.Module, inputs, labels) -> torch.Tensor:
    if labels is None:  # image tasks take the whole batch
        return task.forward_loss(model, inputs)
    return task.loss_of_inputs(model, inputs, labels)
