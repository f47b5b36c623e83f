"""Image classification: cross-entropy of a model's class logits against caption-derived labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.config.schema import Config
from gigatron.models.layers.factory import LayerFactory


class ImageClassificationTask:
    """Mean cross-entropy over the present images of a micro-batch (data.on_error=skip placeholders are not)."""

    name = "classify"
    modality = "image"

    def __init__(self, factory: LayerFactory, cfg: Config | None = None) -> None:
        self.factory = factory

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of [b, classes] logits over the samples where `keep`."""
        per_image = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none")
        return (per_image * keep).sum() / keep.sum().clamp(min=1)

    def forward_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one micro-batch {"image": uint8 [b, 3, H, W], "label": [b], "present": [b], ...}."""
        return self.loss(model(batch["image"]), batch["label"], batch["present"])
