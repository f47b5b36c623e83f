"""Training-time features: behaviour the trainer runs through hooks without knowing what it is.

A feature owns a config section and overrides the hooks it needs (OLMo-core's callbacks, with the
two that may take over a step or an evaluation, as MatFormer's granularity schedule does):

    prepare(cfg)                  change the run's config before anything is built (growth sets Θ scales)
    start_point(log)              a logical checkpoint that a run with no checkpoint of its own starts
                                  from (growth: the source grown to the run's model)
    flops_per_token(fn)           model FLOPs per trained token when the feature changes what a step
                                  computes (MatFormer: every granularity, or their expectation)
    train_step(step, ctx, mbs)    one optimizer step over the micro-batches -> (loss, extra metrics)
    evaluate(ctx, batches)        validation -> (loss, extra metrics)

The trainer calls `prepare`, `start_point` and `flops_per_token` on every feature in order; for a
step or an evaluation the first feature that answers (not None) runs it, else the trainer's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class StepContext:
    """What the trainer lends a feature for a step or an evaluation."""

    engine: Any  # the DeepSpeed engine (or pipeline engine)
    task: Any  # the objective: forward_loss(model, batch), pipeline_pairs(batch)
    device: torch.device | str
    is_pipeline: bool
    dp_mean: Callable[[torch.Tensor], torch.Tensor]  # mean over the data-parallel (and CP) ranks
    validation_loss: Callable[[list], float]  # the trainer's loss over validation micro-batches
    # Report each micro-batch's (weighted) loss before the step that applies it: the numerical-fault
    # guard judges the step by it (pretrain/numerics.py).
    observe_loss: Callable[[torch.Tensor], None] = lambda _loss: None

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped model."""
        return self.engine.module


class TrainingFeature:
    """Base class: every hook does nothing."""

    name = "feature"

    def prepare(self, cfg: Any) -> None:
        """Change the run's config before the data, model and engine are built."""

    def start_point(self, log: Callable[[str], None]) -> Any | None:
        """A LogicalCheckpoint to start from when the run has no checkpoint of its own."""
        return None

    def flops_per_token(self, flops_per_token: Callable[[Any, int], float]) -> float | None:
        """Model FLOPs per trained token of a step, given the family's (model config, seq) -> FLOPs."""
        return None

    def train_step(self, step: int, ctx: StepContext, micro_batches: list) -> tuple[float, dict[str, float]] | None:
        """Run optimizer step `step` (0-based) itself, or None to leave it to the trainer."""
        return None

    def evaluate(self, ctx: StepContext, batches: list) -> tuple[float, dict[str, float]] | None:
        """Validate itself (batches are on the device), or None to leave it to the trainer."""
        return None
