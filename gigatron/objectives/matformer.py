"""Which nested FFN granularities a MatFormer step trains, and with what weight (`train.matformer_*`).

sum     every step runs forward/backward at every granularity on the same batch and takes one
        optimizer step on sum_g w_g·loss_g, the weights normalised to sum to 1 (so the learning rate
        and gradient clipping mean what they mean for an ordinary model).
sample  one granularity per step, drawn from `train.matformer_probabilities` by a generator seeded
        with (train.seed, step): every rank draws the same one, and a resumed run the same sequence.
"""

from __future__ import annotations

import torch

from gigatron.config.schema import Config
from gigatron.models.layers.init import name_seed
from gigatron.models.layers.nested_ffn import submodel_config


class GranularitySchedule:
    """(granularity, loss weight) pairs to train at each step."""

    def __init__(self, cfg: Config) -> None:
        nesting = cfg.model.matformer
        self.mode = cfg.train.matformer_mode
        self.granularities = [float(g) for g in nesting.granularities]
        weights = cfg.train.matformer_weights or [1.0] * len(self.granularities)
        self.weights = [w / sum(weights) for w in weights]
        probabilities = cfg.train.matformer_probabilities or [1.0] * len(self.granularities)
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


def nested_flops_per_token(cfg: Config, flops_per_token) -> float:
    """Model FLOPs per trained token of a MatFormer step: all granularities (sum) or their expectation (sample)."""
    schedule = GranularitySchedule(cfg)
    if schedule.mode == "sum":
        shares = [1.0 if w > 0 else 0.0 for w in schedule.weights]
    else:
        shares = schedule.probabilities.tolist()
    return sum(share * flops_per_token(submodel_config(cfg.model, g), cfg.data.seq_len)
               for g, share in zip(schedule.granularities, shares, strict=True))
