"""Every conversion checks its own output: same tensors, same logits on a fixed batch."""

from __future__ import annotations

import torch
from torch import nn

from gigatron.checkpoint.consolidated import LogicalCheckpoint
from gigatron.checkpoint.native import MOMENTS
from gigatron.checkpoint.reader import model_from_checkpoint
from gigatron.models.registry import get_model_spec


class VerificationError(RuntimeError):
    """A converted checkpoint does not reproduce its source."""


def fixed_batch(vocab_size: int, seq_len: int, batch: int = 2) -> torch.Tensor:
    """The token ids every verification uses (seeded, independent of the global RNG)."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, vocab_size, (batch, min(seq_len, 64)), generator=generator)


@torch.no_grad()
def max_logit_difference(ours: nn.Module, theirs: nn.Module, ids: torch.Tensor) -> float:
    """max |ours(ids) - theirs(ids)|; `theirs` may be a transformers model (logits in `.logits`)."""
    a = ours(ids)
    b = theirs(ids)
    b = getattr(b, "logits", b)
    return float((a.float() - b.float()).abs().max())


def compare_tensors(source: LogicalCheckpoint, result: LogicalCheckpoint) -> int:
    """Check every weight (and moment, when both hold them) is bitwise equal; returns how many were compared."""
    keys: list[str | None] = [None, *(MOMENTS if source.has_optimizer and result.has_optimizer else ())]
    compared = 0
    for name in source.plans:
        for key in keys:
            a, b = source.tensor(name, key), result.tensor(name, key)
            if a.shape != b.shape or not torch.equal(a.float(), b.float()):
                diff = float((a.float() - b.float()).abs().max()) if a.shape == b.shape else float("inf")
                raise VerificationError(f"{result.path}: {key or 'weight'} of {name} differs from {source.path} "
                                        f"(max |diff| {diff:.3g})")
            compared += 1
    if source.has_optimizer and result.has_optimizer and source.optimizer_step != result.optimizer_step:
        raise VerificationError(f"{result.path}: optimizer step {result.optimizer_step}, source has "
                                f"{source.optimizer_step}")
    return compared


def verify_conversion(source: LogicalCheckpoint, result: LogicalCheckpoint, tolerance: float = 0.0,
                      log=print) -> float:
    """Bitwise tensor comparison, then logits of both TP=1 models on a fixed batch; returns the max difference."""
    compared = compare_tensors(source, result)
    diff = 0.0
    if get_model_spec(type(source.cfg.model).family).task == "lm":
        ids = fixed_batch(source.cfg.model.vocab_size, source.cfg.data.seq_len)
        diff = max_logit_difference(model_from_checkpoint(result), model_from_checkpoint(source), ids)
        if diff > tolerance:
            raise VerificationError(f"{result.path}: logits differ from {source.path} by {diff:.3g} "
                                    f"(tolerance {tolerance:.1g})")
    log(f"[verify] {result.path}: {compared} tensors bitwise equal to the source; max logit difference {diff:.3g} "
        f"on a fixed batch")
    return diff
