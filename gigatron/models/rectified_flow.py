"""Rectified flow (Liu et al. 2022; Esser et al. 2024, "SD3"): the straight path from data to noise.

x_t = (1 − t)·x₀ + t·ε, t ∈ [0, 1]; the model predicts the velocity v = dx_t/dt = ε − x₀, trained by
mean squared error. Sampling integrates dx/dt = v from t = 1 (noise) to t = 0 (data) with Euler steps.
Training times are drawn logit-normal (SD3): t = sigmoid(m + s·z), z ~ N(0, 1), optionally shifted
towards noise for larger images: t' = shift·t / (1 + (shift − 1)·t).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t for a batch: `t` holds one time per sample."""
    t = _per_sample(t, x0)
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the model is trained to predict, ε − x₀."""
    return noise - x0


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift: more time near noise for shift > 1; identity at shift = 1."""
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def logit_normal_time(generator: torch.Generator, mean: float, std: float, shift: float = 1.0) -> torch.Tensor:
    """One training time t = shift(sigmoid(mean + std·z)), z ~ N(0, 1), drawn from `generator`."""
    z = torch.randn((), generator=generator)
    return shift_time(torch.sigmoid(mean + std * z), shift)


def guided(velocity: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor], scale: float) -> Velocity:
    """Classifier-free guidance: v_u + scale·(v_c − v_u), from a field called with conditioned=True/False.

    scale = 1 is the conditional field alone (one evaluation per step).
    """
    if scale == 1.0:
        return lambda x, t: velocity(x, t, True)

    def combined(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        conditional = velocity(x, t, True)
        unconditional = velocity(x, t, False)
        return unconditional + scale * (conditional - unconditional)

    return combined


def sample_times(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """The `steps + 1` times of an Euler schedule from 1 to 0 (uniform, then shifted)."""
    if steps < 1:
        raise ValueError(f"the sampler needs at least one step, got {steps}")
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64), shift)


@torch.no_grad()
def euler_sample(velocity: Velocity, noise: torch.Tensor, steps: int, shift: float = 1.0) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from x(1) = noise to t = 0 with `steps` Euler steps; returns x(0).

    `velocity` receives t as a [batch] tensor of the current time.
    """
    times = sample_times(steps, shift, noise.device)
    x = noise
    for t_now, t_next in zip(times[:-1].tolist(), times[1:].tolist(), strict=True):
        t = torch.full((x.shape[0],), t_now, device=x.device, dtype=x.dtype)
        x = x + (t_next - t_now) * velocity(x, t)
    return x
