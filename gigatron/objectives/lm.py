"""Next-token prediction: the objective of every language-model family."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from gigatron.config.schema import Config
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.lm_ends import Head


def find_head(model: nn.Module, required: bool = True) -> Head | None:
    """The language model's output head inside `model` (which may be wrapped, e.g. by DeepSpeed)."""
    for module in model.modules():
        if isinstance(module, Head):
            return module
    if required:
        raise ValueError(f"train.loss_chunk_tokens needs a language-model head (lm_ends.Head) in the model; "
                         f"{type(model).__name__} has none")
    return None


class LanguageModelingTask:
    """Next-token prediction over packed samples of seq_len + 1 tokens."""

    name = "lm"
    modality = "text"

    def __init__(self, factory: LayerFactory, cfg: Config | None = None) -> None:
        self.factory = factory
        # train.loss_chunk_tokens: the model's head returns normed hidden states and `loss` applies
        # its output layer in chunks of tokens (models/layers/linear_cross_entropy.py).
        self.chunk = cfg.train.loss_chunk_tokens if cfg is not None else 0
        self._head: Head | None = None
        self._head_of: nn.Module | None = None  # the model `_head` was found in

    def forward_loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """The loss of one micro-batch of [b, s+1] token ids (already on the model's device)."""
        return self.loss_of_inputs(model, *self.split_local(batch))

    def loss_of_inputs(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of the model on this rank's (inputs, labels), as split by `split_local`."""
        if not self.chunk:
            return self.loss(model(inputs), labels)
        # Only for this forward: the same model still returns logits to anyone else (generation).
        if self._head_of is not model:
            self._head, self._head_of = find_head(model), model
        head = self._head
        head.returns_hidden = True
        try:
            hidden = model(inputs)
        finally:
            head.returns_hidden = False
        return self.loss(hidden, labels)

    def prepare_pipeline(self, stage: nn.Module) -> None:
        """Before DeepSpeed's pipeline engine trains `stage` with `loss` as its loss function: with
        chunked loss, the last stage's head returns hidden states for good (the pipeline module
        serves nothing but `loss`)."""
        if self.chunk and (head := find_head(stage, required=False)) is not None:
            head.returns_hidden = True
            self._head = head

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

        With train.loss_chunk_tokens, `logits` are the head's normed hidden states instead, and the
        output layer is applied here a chunk of tokens at a time.

        Under context parallelism a rank sees part of each sequence: its loss is its tokens' sum over
        the CP group's count of labelled tokens, times cp, because DeepSpeed averages gradients (and
        the trainer averages logged losses) over CP ranks as over data-parallel ones.
        """
        keep = labels >= 0
        count = keep.sum()
        cp = self.factory.cp
        if cp is not None:
            count = count.detach().clone()
            dist.all_reduce(count, group=cp.group)
        if self.chunk:
            if self._head is None:
                raise RuntimeError("train.loss_chunk_tokens: `loss` got hidden states but knows no output layer; "
                                   "call forward_loss, or prepare_pipeline on the pipeline stage first")
            scale = (1 if cp is None else cp.size) / count.clamp(min=1)
            return self.factory.output_cross_entropy(logits, self._head.output, labels.clamp(min=0),
                                                     keep * scale, self.chunk)
        per_token = self.factory.cross_entropy(logits, labels.clamp(min=0))
        if cp is None:
            return (per_token * keep).sum() / count.clamp(min=1)
        return (per_token * keep).sum() * cp.size / count.clamp(min=1)

