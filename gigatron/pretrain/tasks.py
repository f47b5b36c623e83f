"""Training objectives. The trainer is shared; a task says how a sample batch becomes a loss."""

from __future__ import annotations

import torch

from gigatron.models.layers.factory import LayerFactory


class LanguageModelingTask:
    """Next-token prediction over packed samples of seq_len + 1 tokens."""

    name = "lm"

    def __init__(self, factory: LayerFactory) -> None:
        self.factory = factory

    @staticmethod
    def split(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[b, s+1] token ids -> (inputs [b, s], labels [b, s]).

        Samples the loader skipped (data.on_error=skip) arrive as rows of -1: their inputs become
        id 0 and their labels stay negative, which `loss` ignores.
        """
        return batch[:, :-1].clamp(min=0).contiguous(), batch[:, 1:].contiguous()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over labelled tokens; logits may be this rank's vocab shard (TP>1)."""
        keep = labels >= 0
        per_token = self.factory.cross_entropy(logits, labels.clamp(min=0))
        return (per_token * keep).sum() / keep.sum().clamp(min=1)


def build_task(name: str, factory: LayerFactory) -> LanguageModelingTask:
    """The task registered under `name`."""
    tasks = {"lm": LanguageModelingTask}
    if name not in tasks:
        raise KeyError(f"unknown task {name!r}; valid: {', '.join(tasks)}")
    return tasks[name](factory)
