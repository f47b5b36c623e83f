"""Learning-rate schedules: linear warmup, then cosine, warmup-stable-decay (WSD), or constant."""

from __future__ import annotations

import math

from gigatron.config.schema import TrainConfig


def lr_at(step: int, total_steps: int, train: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of a run of `total_steps` steps.

    Warmup rises linearly to `lr` reaching it at step `warmup_steps - 1`; then
    cosine decays to `min_lr` at the last step; wsd holds `lr` and decays linearly to `min_lr` over
    the last `decay_fraction` of the steps (Hu et al. 2024, MiniCPM); constant holds `lr`.
    """
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return train.lr
    if train.schedule == "cosine":
        span = max(1, total_steps - 1 - train.warmup_steps)
        progress = min(1.0, (step - train.warmup_steps) / span)
        return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1.0 + math.cos(math.pi * progress))
    decay_steps = max(1, round(train.decay_fraction * total_steps))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return train.lr
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return train.lr + (train.min_lr - train.lr) * progress
