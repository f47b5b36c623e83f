"""Resuming a run: choosing the checkpoint all ranks agree on, checking it is safe to read, and
loading it (DeepSpeed's own loader on the same layout, the logical path on any other)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gigatron.checkpoint.consolidated import is_consolidated
from gigatron.checkpoint.files import DamagedCheckpoint, choose_resume_tag, require_intact
from gigatron.checkpoint.reader import open_checkpoint, resolve_checkpoint
from gigatron.checkpoint.safe_load import safe_torch_load
from gigatron.checkpoint.save import TRAINER_STATE, TrainerState, set_rng_state
from gigatron.launcher.dist_env import broadcast_from_first_rank


class ResumeError(RuntimeError):
    """The checkpoint to resume from is missing, damaged or unsafe; the message names it."""


def require_intact_on_first_rank(path: Path, checksums: bool = True) -> None:
    """Rank 0 checks `path` against its manifest for every rank (one read of each file, not one per
    rank); all ranks raise DamagedCheckpoint when it does not match."""
    problem = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            require_intact(path, checksums)
        except DamagedCheckpoint as exc:
            problem = str(exc)
    problem = broadcast_from_first_rank(problem)
    if problem is not None:
        raise DamagedCheckpoint(problem)


def resume_tag(ckpt_dir: Path, resume: str, log=print, checksums: bool = True) -> tuple[Path, str] | None:
    """Where to resume from, agreed by all ranks: (directory, tag) or None for a fresh start.

    `resume` is 'auto' (the newest intact checkpoint in `ckpt_dir`, if any), 'none', or a path:
    a run directory, a checkpoints directory, a step_NNNNNNNN tag of any layout or a consolidated
    checkpoint directory. A path is used only while `ckpt_dir` holds no checkpoint of its own.
    Rank 0 checks the chosen checkpoint against its manifest (sha256 too with `checksums`): a
    damaged one of the run's own is skipped for the previous one, a damaged PATH is an error.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    choice: tuple[str, str] | None | str = None
    if rank == 0:
        try:
            if resume == "none":
                choice = None
            elif resume == "auto":
                tag = choose_resume_tag(ckpt_dir, log=log, checksums=checksums)
                choice = (str(ckpt_dir), tag) if tag else None
            elif (own := choose_resume_tag(ckpt_dir, log=log, checksums=checksums)) is not None:
                # A path seeds a new run; once the run has saved, a restart (requeue, preemption)
                # must continue the run, not go back to the seed (torchtitan's initial_load_path).
                log(f"[resume] {ckpt_dir} holds this run's own checkpoint {own}; resuming from it, not from "
                    f"checkpoint.resume={resume} (which only seeds a run that has not saved yet)")
                choice = (str(ckpt_dir), own)
            else:
                try:
                    path = resolve_checkpoint(resume)
                except FileNotFoundError as exc:
                    raise RuntimeError(f"checkpoint.resume={resume!r}: {exc}; valid: auto, none, or a checkpoint "
                                       "path") from exc
                require_intact(path, checksums)
                choice = (str(path.parent), path.name)
        except (RuntimeError, DamagedCheckpoint) as exc:
            choice = f"error: {exc}"
    choice = broadcast_from_first_rank(choice)
    if isinstance(choice, str):
        raise ResumeError(choice.removeprefix("error: "))
    return None if choice is None else (Path(choice[0]), choice[1])


@dataclass
class ResumePlan:
    """How to resume: DeepSpeed's own loader when the layout is unchanged, else the logical path."""

    path: Path
    logical: Any | None  # a LogicalCheckpoint when the layout changed or the source is consolidated
    model: Any = None  # the checkpoint's model config

    def check_model(self, model: Any) -> None:
        """Raise unless the run's model config is the checkpoint's: fields that are not parameter
        shapes (Θ scales, rope base, epsilons) would otherwise change the function silently."""
        if self.model is None or self.model == model:
            return
        if type(self.model) is not type(model):
            raise ResumeError(f"{self.path} holds a model.family={type(self.model).family} model; the config asks "
                              f"for model.family={type(model).family}")
        differ = [f"model.{f.name}: checkpoint {getattr(self.model, f.name)!r}, config {getattr(model, f.name)!r}"
                  for f in dataclasses.fields(model) if getattr(self.model, f.name) != getattr(model, f.name)]
        raise ResumeError(f"{self.path} was written for a different model: {'; '.join(differ)}. Use the "
                          f"checkpoint's config.yaml (or set these keys) to continue from it")

    @property
    def same_layout(self) -> bool:
        """Whether DeepSpeed's files are loaded as they are."""
        return self.logical is None


def current_layout(parallel, precision: str, dp_size: int) -> dict[str, Any]:
    """This run's layout, in the terms of NativeCheckpoint.layout."""
    # DP matters to the files only where the optimizer is partitioned (ZeRO >= 1); at stage 0 every
    # DP rank holds the same state (bf16 included: DeepSpeed's unfused wrapper keeps whole fp32 masters).
    return {"tp": parallel.tp, "pp": parallel.pp, "dp": dp_size if parallel.zero_stage > 0 else None,
            "zero_stage": parallel.zero_stage, "precision": precision}


def _scan_safely(tag_dir: Path) -> None:
    # DeepSpeed's loader unpickles without restriction. Every file it will read is first read
    # here with weights-only loading (storages mapped, not read); one that needs arbitrary
    # objects is refused before DeepSpeed ever opens it.
    for path in sorted(tag_dir.rglob("*.pt")):
        safe_torch_load(path, mmap=True)


def plan_resume(where: tuple[Path, str] | None, layout: dict[str, Any], log=print) -> ResumePlan | None:
    """Open the chosen checkpoint, check it is safe to read, and pick the loading path (all ranks)."""
    if where is None:
        return None
    path = where[0] / where[1]
    rank = dist.get_rank() if dist.is_initialized() else 0
    problem = None
    if rank == 0:
        try:
            if not is_consolidated(path):
                _scan_safely(path)
        except ValueError as exc:
            problem = str(exc)
    problem = broadcast_from_first_rank(problem)
    if problem is not None:
        raise ResumeError(problem)
    try:
        ckpt = open_checkpoint(path, verified=True)  # rank 0 checked it in resume_tag
    except ValueError as exc:
        raise ResumeError(str(exc)) from exc
    if ckpt.kind == "native" and ckpt.layout == layout:
        return ResumePlan(path, None, ckpt.cfg.model)
    log(f"[resume] {path} was written by {ckpt.layout}; this run is {layout}: loading its logical state")
    return ResumePlan(path, ckpt, ckpt.cfg.model)


def load_logical_state(ckpt) -> TrainerState:
    """Counters and RNG of a logical checkpoint (weights and optimizer were set when the engine was built).

    RNG streams of other layouts do not map to ours; every rank continues rank 0's.
    """
    if ckpt.rng is not None:
        set_rng_state(ckpt.rng)
    return TrainerState(**ckpt.trainer_state)


def load_checkpoint(engine, load_dir: Path, tag: str) -> TrainerState:
    """Restore model, optimizer, scheduler, RNG and counters from `load_dir/tag` (same layout)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    tag_dir = load_dir / tag
    path, _ = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load {tag_dir}")
    rng_file = tag_dir / "rng" / f"rank_{rank:05d}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    raw = json.loads((tag_dir / TRAINER_STATE).read_text())
    return TrainerState(**raw)

