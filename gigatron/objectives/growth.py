"""Growing a trained TokenFormer checkpoint (`gigatron grow`, section `grow:`).

The family's own rules (which shapes may grow, how new tokens start) are in
`gigatron.models.tokenformer.growth`; this module applies them to checkpoints: a logical
checkpoint that appends the new tokens on the fly (see `consolidated.py`), keeping the old step,
tokens and data position. AdamW moments of new tokens start at zero; those of existing tokens are
kept or reset.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch

from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint, LogicalCheckpoint, write_consolidated
from gigatron.checkpoint.param_plan import param_plans
from gigatron.checkpoint.reader import model_from_checkpoint, open_checkpoint, resolve_checkpoint
from gigatron.checkpoint.resume import require_intact_on_first_rank
from gigatron.checkpoint.verify import VerificationError, fixed_batch
from gigatron.config import ConfigError
from gigatron.models.tokenformer.growth import GrowthError, grown_model_config, new_token_rows, token_counts
from gigatron.objectives.features import TrainingFeature

__all__ = ["GrowthAtStart", "GrowthError", "GrownCheckpoint", "grow"]

class GrownCheckpoint:
    """A logical checkpoint that reads `source` and appends the new tokens on the fly."""

    kind = "grown"

    def __init__(self, source: LogicalCheckpoint, target_model: Any, init: str = "preserve",
                 optimizer: str = "keep", seed: int = 0, schedule: str = "continue") -> None:
        if optimizer not in ("keep", "reset"):
            raise GrowthError(f"optimizer={optimizer!r}; valid: keep, reset")
        if schedule not in ("continue", "restart"):
            raise GrowthError(f"schedule={schedule!r}; valid: continue, restart")
        self.source, self.init, self.optimizer, self.seed = source, init, optimizer, seed
        self.cfg = copy.deepcopy(source.cfg)
        self.cfg.model = grown_model_config(source.cfg.model, target_model, init)
        self.path = source.path
        self.plans = param_plans(self.cfg.model)
        self.trainer_state = source.trainer_state
        self.has_optimizer = source.has_optimizer
        self.optimizer_step = source.optimizer_step
        self.rng = source.rng
        if schedule == "restart":  # weights only: a new run that starts from the grown model
            fingerprint = source.trainer_state.get("tokenizer_fingerprint", "")
            self.trainer_state = {"step": 0, "tokens": 0, "loader": None, "tokenizer_fingerprint": fingerprint}
            self.has_optimizer, self.optimizer_step, self.rng = False, 0, None
        self.layout = {"grown_from": str(source.path), "init": init, "optimizer": optimizer, "schedule": schedule}

    def stored_names(self) -> set[str]:
        """Every parameter of the grown model."""
        return set(self.plans)

    def tensor(self, name: str, key: str | None = None) -> torch.Tensor:
        """The grown tensor: the source's rows, then the new tokens (zero moments for them)."""
        old = self.source.tensor(name, key)
        if key is not None and self.optimizer == "reset":
            old = torch.zeros_like(old)
        shape = self.plans[name].shape
        if tuple(old.shape) == shape:
            return old
        extra = shape[0] - old.shape[0]
        new = torch.zeros(extra, shape[1]) if key is not None else new_token_rows(self.cfg.model, name, extra, shape[1], self.init, self.seed)
        return torch.cat([old.float(), new])

    def model_weight(self, name: str) -> torch.Tensor:
        """Same as the master weight."""
        return self.tensor(name)


class GrowthAtStart(TrainingFeature):
    """Section `grow:`: a run with no checkpoint of its own starts from `grow.checkpoint` grown to its model.

    The Θ scales the growth defines are applied on every start, also when the grown run resumes its
    own checkpoints, so the model always computes what it computed right after growth.
    """

    name = "grow"

    def __init__(self, cfg: Any) -> None:
        self.grown: GrownCheckpoint | None = None

    def prepare(self, cfg: Any) -> None:
        """Open the source, grow its view to the run's model, and take the grown model config."""
        g = cfg.grow
        try:
            source = resolve_checkpoint(g.checkpoint)
            require_intact_on_first_rank(source, cfg.checkpoint.verify_checksums)
            self.grown = GrownCheckpoint(open_checkpoint(source, verified=True), cfg.model, g.init, g.optimizer,
                                         cfg.train.seed, g.schedule)
        except (GrowthError, FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"grow.checkpoint={g.checkpoint}: {exc}") from exc
        cfg.model = self.grown.cfg.model

    def start_point(self, log) -> GrownCheckpoint | None:
        """The grown source."""
        if self.grown is not None:
            log(f"[grow] starting from {self.grown.path} grown to {self.grown.layout}")
        return self.grown


def grow(ckpt: str | Path, out: str | Path, qkv: int | None, proj: int | None, ffn: int | None, init: str,
         optimizer: str = "keep", tolerance: float = 1e-6, log=print, checksums: bool = True,
         schedule: str = "continue") -> Path:
    """Write the grown checkpoint `out` (consolidated) and verify it: with `preserve`, logits equal the
    source's on a fixed batch within `tolerance` relative to their size; in any case the old tokens
    are copied bitwise. `checksums`: check the source's sha256s (its sizes always)."""
    source = open_checkpoint(ckpt, checksums)
    old = source.cfg.model
    if type(old).family != "tokenformer":
        raise GrowthError(f"{source.path}: model.family={type(old).family}; only TokenFormer checkpoints grow")
    # Unset counts keep the checkpoint's setting; a proj_tokens that follows qkv_tokens keeps following
    # it, exactly as the same keys in a config do.
    target = dataclasses.replace(old, qkv_tokens=qkv or old.qkv_tokens, proj_tokens=proj or old.proj_tokens,
                                 ffn_tokens=ffn or old.ffn_tokens)
    grown = GrownCheckpoint(source, target, init, optimizer, seed=source.cfg.train.seed, schedule=schedule)
    write_consolidated(grown, Path(out), log=log)
    try:
        return _verify_growth(source, ConsolidatedCheckpoint(Path(out)), init, tolerance, log)
    except VerificationError:
        shutil.rmtree(out, ignore_errors=True)  # written by us a moment ago; never a user's data
        raise


def _verify_growth(source: LogicalCheckpoint, result: Any, init: str, tolerance: float, log) -> Path:

    out, old = result.path, source.cfg.model
    counts = token_counts(old)
    for name in source.plans:
        rows = source.plans[name].shape[0]
        if not torch.equal(result.tensor(name)[:rows], source.tensor(name).float()):
            raise VerificationError(f"{out}: the existing rows of {name} were not copied exactly")
    ids = fixed_batch(old.vocab_size, source.cfg.data.seq_len)
    with torch.no_grad():
        before = model_from_checkpoint(source)(ids)
        after = model_from_checkpoint(result)(ids)
    diff = float((after - before).abs().max())
    # Relative to the logits' size: appending zero-scoring tokens changes only the rounding of
    # reductions over the (longer) token axis.
    relative = diff / max(1.0, float(before.abs().max()))
    if init == "preserve" and relative > tolerance:
        raise VerificationError(f"{out}: the grown model's logits differ from the source's by {diff:.3g} "
                                f"({relative:.3g} of their size; tolerance {tolerance:g}) although --init "
                                "preserve should keep the function")
    new = token_counts(result.cfg.model)
    log(f"[grow] {source.path} -> {out}: tokens qkv {counts['qkv']}->{new['qkv']}, proj {counts['proj']}->"
        f"{new['proj']}, ffn {counts['ffn']}->{new['ffn']} ({init}); logits moved by at most {diff:.3g} "
        f"({relative:.3g} of their size) on a fixed batch")
    return out
