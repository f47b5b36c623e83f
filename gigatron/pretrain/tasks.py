"""Training objectives. The trainer is shared; a task says how a sample batch becomes a loss."""

from __future__ import annotations

import torch
import torch.distributed as dist

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


def build_task(name: str, factory: LayerFactory) -> LanguageModelingTask:
    """The task registered under `name`."""
    tasks = {"lm": LanguageModelingTask}
    if name not in tasks:
        raise KeyError(f"unknown task {name!r}; valid: {', '.join(tasks)}")
    return tasks[name](factory)
