"""Rectified-flow diffusion training (see `gigatron.models.rectified_flow`).

Per sample, from a generator seeded by (train.seed, the sample's global number): a logit-normal
time t, Gaussian noise ε, whether its condition is dropped (classifier-free guidance) and whether
it is self-conditioned. The same sample therefore gets the same draw on any layout, and the
validation loss is the same every time it is computed.
"""

from __future__ import annotations

import torch
from torch import nn

from gigatron.config.schema import Config, DiffusionConfig
from gigatron.models.layers.init import name_seed
from gigatron.models.rectified_flow import interpolate, logit_normal_time, velocity_target

_STREAM = "rectified_flow"  # names the generator stream, so it never coincides with parameter init


class RectifiedFlowTask:
    """MSE between predicted and true velocity, averaged over each image's valid pixels, then over
    the present images of a micro-batch.

    The model is called as model(x_t, t, condition) with x_t from images scaled to [−1, 1] (or
    latents), t in [0, 1] and a dict holding what the batch has: "label" (−1 where dropped or
    absent), "caption" (token ids, all −1 where dropped), "size" (each image's valid (h, w)) and
    "self_condition" (a bool per sample). Each model reads the keys it uses.
    """

    name = "rectified_flow"
    modality = "image"

    def __init__(self, factory, cfg: Config | None = None) -> None:
        self.factory = factory
        self.flow: DiffusionConfig = cfg.diffusion if cfg is not None else DiffusionConfig()
        self.seed = cfg.train.seed if cfg is not None else 0

    def draw(self, numbers: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """(t [b], noise [b, *shape], dropped [b] bool, self_condition [b] bool) for these sample numbers."""
        f = self.flow
        times, noises, drops, selfs = [], [], [], []
        for number in numbers.tolist():
            g = torch.Generator().manual_seed(name_seed(self.seed, f"{_STREAM}:{number}"))
            times.append(logit_normal_time(g, f.logit_mean, f.logit_std, f.shift))
            noises.append(torch.randn(shape, generator=g))
            flags = torch.rand(2, generator=g)
            drops.append(bool(flags[0] < f.condition_dropout))
            selfs.append(bool(flags[1] < f.self_condition))
        return torch.stack(times), torch.stack(noises), torch.tensor(drops), torch.tensor(selfs)

    def forward_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one micro-batch {"image": uint8 [b, C, H, W] (or float latents), "label",
        "present", "number": [b], optionally "caption" [b, T] and "size" [b, 2]}."""
        images = batch["image"]
        device = images.device
        x0 = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
        t, noise, dropped, self_condition = (v.to(device) for v in self.draw(batch["number"].cpu(), tuple(x0.shape[1:])))
        condition = {"label": torch.where(dropped, torch.full_like(batch["label"], -1), batch["label"]),
                     "self_condition": self_condition}
        if "caption" in batch:
            condition["caption"] = batch["caption"].masked_fill(dropped[:, None], -1)
        valid = torch.ones_like(x0[:, :1])
        if "size" in batch:
            condition["size"] = batch["size"]
            rows = torch.arange(x0.shape[2], device=device)[None, :, None] < batch["size"][:, 0, None, None]
            cols = torch.arange(x0.shape[3], device=device)[None, None, :] < batch["size"][:, 1, None, None]
            valid = (rows & cols)[:, None].to(x0.dtype)
        x_t = interpolate(x0, noise, t) * valid
        predicted = model(x_t, t, condition)
        error = (predicted.float() - velocity_target(x0, noise)).pow(2) * valid
        per_sample = error.flatten(1).sum(1) / (valid.flatten(1).sum(1) * x0.shape[1])
        keep = batch["present"]  # samples the loader skipped carry no image
        return (per_sample * keep).sum() / keep.sum().clamp(min=1)
