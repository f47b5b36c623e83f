"""Next-token prediction: the objective of every language-model family."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from gigatron.config.schema import Config
from gigatron.models.layers.factory import LayerFactory


class LanguageModelingTask:
    """Next-token prediction over packed samples of seq_len + 1 tokens."""

    name = "lm"
    modality = "text"

    def __init__(self, factory: LayerFactory, cfg: Config | None = None) -> None:
        self.factory = factory

    def forward_loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """The loss of one micro-batch of [b, s+1] token ids (already on the model's device)."""
        inputs, labels = self.split_local(batch)
        return self.loss(model(inputs), labels)

    def pipeline_pairs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) for DeepSpeed's pipeline engine, which applies `loss` on the last stage."""
        return self.split_local(batch)

    @staticmethod
    def split(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[b, s+1] token ids -> (inputs [b, s], labels [b, s]).

        Samples the loader skipped (data.on_error=skip) arrive as rows of -1: their inputs become
        id 0 and their labels stay negative, which `loss` ignores.
        """
        return batch[:, :-1].clamp(min=0).contiguous(), batch[:, 1:].contiguous()

    def split_local(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`split`, then this rank's tokens of every sequence under context parallelism."""
        inputs, labels = self.split(batch)
        cp = self.factory.cp
        if cp is None:
            return inputs, labels
        return cp.layout.shard(inputs, dim=1).contiguous(), cp.layout.shard(labels, dim=1).contiguous()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over labelled tokens; logits may be this rank's vocab shard (TP>1).

        Under context parallelism a rank sees part of each sequence: its loss is its tokens' sum over
        the CP group's count of labelled tokens, times cp, because DeepSpeed averages gradients (and
        the trainer averages logged losses) over CP ranks as over data-parallel ones.
        """
        keep = labels >= 0
        per_token = self.factory.cross_entropy(logits, labels.clamp(min=0))
        count = keep.sum()
        cp = self.factory.cp
        if cp is None:
            return (per_token * keep).sum() / count.clamp(min=1)
        count = count.detach().clone()
        dist.all_reduce(count, group=cp.group)
        return (per_token * keep).sum() * cp.size / count.clamp(min=1)

