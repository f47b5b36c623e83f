"""A micro-batch of an image objective, shaped as the loader hands it over, for planning under
FakeTensorMode (the tensors are fake: only shapes and dtypes matter)."""

from __future__ import annotations

import torch

from gigatron.config.schema import Config


def image_batch(cfg: Config, micro_batch: int) -> dict[str, torch.Tensor]:
    """{"image", "label", "present", "number", "caption"?} for `micro_batch` samples of the largest
    shape the run trains on (square `images.image_size`; latents with the model's channels).

    Aspect-bucketed runs also hand the model each image's valid size; at the largest shape every
    image is whole, which is what the model assumes without sizes, so the batch carries none (fake
    tensors cannot hand their values to the packing). Left out of the plan: the loss's valid-pixel
    mask, b·H·W values."""
    side = cfg.images.image_size
    if cfg.images.latents:
        image = torch.zeros(micro_batch, cfg.model.channels, side, side)
    else:
        image = torch.zeros(micro_batch, 3, side, side, dtype=torch.uint8)
    batch = {"image": image, "label": torch.zeros(micro_batch, dtype=torch.long),
             "present": torch.ones(micro_batch), "number": torch.arange(micro_batch)}
    if getattr(cfg.model, "caption_len", None) is not None:
        batch["caption"] = torch.zeros(micro_batch, cfg.images.caption_len, dtype=torch.long)
    return batch


def fake_condition_draws(task) -> None:
    """Make a rectified-flow task draw its per-sample time, noise and flags from shapes alone: its
    generators are seeded by sample numbers, which fake tensors do not hold. No condition is
    dropped and none self-conditioned (a self-conditioning forward runs without saving activations)."""
    def draw(numbers: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        b = numbers.shape[0]
        return (torch.full((b,), 0.5), torch.zeros(b, *shape), _constant(torch.zeros, b, dtype=torch.bool),
                _constant(torch.zeros, b, dtype=torch.bool))

    task.draw = draw


def _constant(make, *args, **kwargs) -> torch.Tensor:
    """A fake tensor that knows its (small) value, so that models may branch on it (`flags.any()`)."""
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    mode = detect_fake_mode()
    with unset_fake_temporarily():
        real = make(*args, **kwargs)
    return mode.fake_tensor_converter.from_real_tensor(mode, real, make_constant=True)
