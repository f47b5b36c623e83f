"""Rectified flow: the Euler sampler against the exact velocity field of a Gaussian-to-Gaussian
flow, the interpolation and target from their definitions, time sampling, guidance, and the
training task's per-sample draws (independent of how samples are batched)."""

from __future__ import annotations

import torch

from gigatron.config.schema import Config, DiffusionConfig, TrainConfig
from gigatron.models.rectified_flow import (
    euler_sample,
    guided,
    interpolate,
    logit_normal_time,
    sample_times,
    shift_time,
    velocity_target,
)
from gigatron.objectives.image_classification import ImageClassificationTask
from gigatron.objectives.rectified_flow import RectifiedFlowTask


def test_euler_with_the_exact_field_carries_noise_to_the_data_distribution():
    """x0 ~ N(mu, s^2) per dimension, eps ~ N(0, 1): x_t is Gaussian, and the marginal velocity
    E[eps - x0 | x_t] is linear in x_t. Integrating it from N(0, 1) must give N(mu, s^2)."""
    mu, s = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.5, 1.5, 0.1])

    def exact(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t[:, None].double()
        mean = (1 - t) * mu
        var = (1 - t) ** 2 * s ** 2 + t ** 2
        centred = (x - mean) / var
        return (t * centred) - (mu + (1 - t) * s ** 2 * centred)

    noise = torch.randn(200_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = euler_sample(exact, noise, steps=400)
    torch.testing.assert_close(x0.mean(0), mu.double(), atol=0.01, rtol=0)
    torch.testing.assert_close(x0.std(0), s.double(), atol=0.01, rtol=0.01)


def test_interpolation_and_target_follow_the_definition():
    x0, eps, t = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2), torch.tensor([0.0, 0.25, 0.5, 1.0])
    x_t = interpolate(x0, eps, t)
    torch.testing.assert_close(x_t[0], x0[0])
    torch.testing.assert_close(x_t[3], eps[3])
    torch.testing.assert_close(x_t[1], 0.75 * x0[1] + 0.25 * eps[1])
    # The target is the time derivative of the path.
    h = 1e-3
    derivative = (interpolate(x0, eps, t.clamp(max=1 - h) + h) - interpolate(x0, eps, t.clamp(max=1 - h))) / h
    torch.testing.assert_close(derivative, velocity_target(x0, eps), atol=1e-3, rtol=1e-3)


def test_time_sampling_and_shift():
    g = torch.Generator().manual_seed(0)
    times = torch.stack([logit_normal_time(g, 0.0, 1.0) for _ in range(4000)])
    assert times.min() > 0 and times.max() < 1 and abs(times.median() - 0.5) < 0.03
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(shift_time(t, 3.0), torch.tensor([0.0, 0.75, 1.0]))
    schedule = sample_times(4)
    assert schedule[0] == 1 and schedule[-1] == 0 and len(schedule) == 5


def test_guidance_combines_conditional_and_unconditional_fields():
    field = lambda x, t, conditioned: x + (1.0 if conditioned else 0.0)  # noqa: E731
    x, t = torch.zeros(2), torch.zeros(2)
    torch.testing.assert_close(guided(field, 3.0)(x, t), torch.full((2,), 3.0))
    torch.testing.assert_close(guided(field, 1.0)(x, t), torch.ones(2))


def _task(**flow) -> RectifiedFlowTask:
    return RectifiedFlowTask(None, Config(model=None, train=TrainConfig(seed=7), diffusion=DiffusionConfig(**flow)))


def test_task_draws_depend_on_the_sample_not_the_batch():
    task = _task(condition_dropout=0.5, self_condition=0.5)
    together = task.draw(torch.tensor([10, 11, 12]), (3, 4, 4))
    for i, number in enumerate((10, 11, 12)):
        alone = task.draw(torch.tensor([number]), (3, 4, 4))
        for a, b in zip(together, alone, strict=True):
            assert torch.equal(a[i], b[0])
    assert not torch.equal(together[1][0], together[1][1])
    dropped = task.draw(torch.arange(400), (1,))[2]
    assert 0.4 < dropped.float().mean() < 0.6


def test_task_loss_is_the_velocity_error_of_present_samples():
    task = _task(condition_dropout=0.0, self_condition=0.0)
    seen = {}

    def model(x_t, t, condition):
        seen.update(x_t=x_t, t=t, labels=condition["label"])
        return torch.zeros_like(x_t)

    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    batch = {"image": images, "label": torch.tensor([1, 0]), "present": torch.tensor([True, False]),
             "number": torch.tensor([5, 6])}
    loss = task.forward_loss(model, batch)
    t, noise, _, _ = task.draw(torch.tensor([5, 6]), (3, 4, 4))
    x0 = images.float() / 127.5 - 1
    torch.testing.assert_close(seen["x_t"], interpolate(x0, noise, t))
    expected = (noise[0] - x0[0]).pow(2).mean()
    torch.testing.assert_close(loss, expected)


def test_classification_loss_ignores_absent_samples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    loss = ImageClassificationTask.loss(logits, torch.tensor([0, 0]), torch.tensor([True, False]))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0])))
