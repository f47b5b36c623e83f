"""Which nested FFN granularities a MatFormer step trains, and with what weight (section `matformer:`).

sum     every step runs forward/backward at every granularity on the same batch and takes one
        optimizer step on sum_g w_g·loss_g, the weights normalised to sum to 1 (so the learning rate
        and gradient clipping mean what they mean for an ordinary model).
sample  one granularity per step, drawn from `matformer.probabilities` by a generator seeded
        with (train.seed, step): every rank draws the same one, and a resumed run the same sequence.
"""

from __future__ import annotations

import torch

from gigatron.config.schema import Config
from gigatron.models.layers.init import name_seed
from gigatron.models.layers.nested_ffn import ffn_granularity, submodel_config
from gigatron.objectives import batch_to
from gigatron.objectives.features import StepContext, TrainingFeature


class GranularitySchedule:
    """(granularity, loss weight) pairs to train at each step."""

    def __init__(self, cfg: Config) -> None:
        nesting = cfg.model.matformer
        self.mode = cfg.matformer.mode
        self.granularities = [float(g) for g in nesting.granularities]
        weights = cfg.matformer.weights or [1.0] * len(self.granularities)
        self.weights = [w / sum(weights) for w in weights]
        probabilities = cfg.matformer.probabilities or [1.0] * len(self.granularities)
        self.probabilities = torch.tensor(probabilities, dtype=torch.float64) / sum(probabilities)
        self.seed = cfg.train.seed

    def at(self, step: int) -> list[tuple[float, float]]:
        """What step `step` (0-based) trains."""
        if self.mode == "sum":
            return [(g, w) for g, w in zip(self.granularities, self.weights, strict=True) if w > 0]
        generator = torch.Generator().manual_seed(name_seed(self.seed, f"matformer-step:{step}"))
        index = int(torch.multinomial(self.probabilities, 1, generator=generator))
        return [(self.granularities[index], 1.0)]


def metric_name(granularity: float) -> str:
    """The metrics key of one granularity's loss, e.g. `loss_ffn0.25`."""
    return f"loss_ffn{granularity:g}"


class MatFormerTraining(TrainingFeature):
    """Trains a MatFormer's granularities on the schedule of the `matformer:` section."""

    name = "matformer"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.schedule = GranularitySchedule(cfg)

    def flops_per_token(self, flops_per_token) -> float:
        """Model FLOPs per trained token of a step: every scheduled granularity's (sum), or their
        expectation (sample)."""
        schedule, cfg = self.schedule, self.cfg
        if schedule.mode == "sum":
            shares = [1.0 if w > 0 else 0.0 for w in schedule.weights]
        else:
            shares = schedule.probabilities.tolist()
        return sum(share * flops_per_token(submodel_config(cfg.model, g), cfg.data.seq_len)
                   for g, share in zip(schedule.granularities, shares, strict=True))

    def train_step(self, step: int, ctx: StepContext, micro_batches: list) -> tuple[float, dict[str, float]]:
        """The scheduled granularities of every micro-batch, one optimizer step."""
        ds, task = ctx.engine, ctx.task
        plan = self.schedule.at(step)
        if ctx.is_pipeline:  # sample mode only (validated): one granularity for the whole batch
            with ffn_granularity(ds.module, plan[0][0]):
                pairs = iter([task.pipeline_pairs(batch_to(mb, ctx.device)) for mb in micro_batches])
                loss = float(ds.train_batch(data_iter=pairs).detach().float())
            return loss, {metric_name(plan[0][0]): loss}
        sums = torch.zeros(len(plan), device=ctx.device)
        for i, mb in enumerate(micro_batches):
            mb = batch_to(mb, ctx.device)
            weighted = torch.zeros((), device=ctx.device)
            for j, (granularity, weight) in enumerate(plan):
                if len(plan) > 1:
                    # Several backward passes per micro-batch: DeepSpeed must reduce and step only
                    # after the last one of the last micro-batch (its documented manual boundary).
                    ds.set_gradient_accumulation_boundary(i == len(micro_batches) - 1 and j == len(plan) - 1)
                # Backward inside the granularity too: recomputed layers run their forward again there.
                with ffn_granularity(ds.module, granularity):
                    micro_loss = task.forward_loss(ds, mb)
                    ds.backward(micro_loss * weight)
                sums[j] += micro_loss.detach().float()
                weighted += weight * micro_loss.detach().float()
            ctx.observe_loss(weighted)
            ds.step()
        means = ctx.dp_mean(sums / len(micro_batches))
        weights = torch.tensor([w for _, w in plan], device=ctx.device)
        per_granularity = {metric_name(g): float(v) for (g, _), v in zip(plan, means, strict=True)}
        return float((means * weights).sum()), per_granularity

    def evaluate(self, ctx: StepContext, batches: list) -> tuple[float, dict[str, float]]:
        """The validation loss at every granularity; the full model's is the run's validation loss."""
        losses = {}
        for granularity in self.schedule.granularities:
            with ffn_granularity(ctx.module, granularity):
                losses[metric_name(granularity)] = ctx.validation_loss(batches)
        return losses[metric_name(1.0)], losses
