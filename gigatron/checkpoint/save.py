"""Saving a run: DeepSpeed's model/optimizer files plus everything else a run needs to continue
bitwise-identically (loader counters, RNG states, step/token counters, config)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gigatron.checkpoint.files import (
    LATEST,
    MANIFEST,
    atomic_write_text,
    prune,
    read_latest,
    tag_for_step,
    write_manifest,
)

TRAINER_STATE = "trainer_state.json"
CONFIG_FILE = "config.yaml"


@dataclass
class TrainerState:
    """Counters that, with the loader state, say exactly where a run is."""

    step: int = 0
    tokens: int = 0
    loader: dict[str, Any] | None = None
    tokenizer_fingerprint: str = ""
    # Numerical faults (pretrain/numerics.py): the recent applied losses a spike is judged against,
    # and how many steps so far were not applied.
    recent_losses: list[float] = field(default_factory=list)
    rejected_steps: int = 0

    def to_json(self) -> str:
        """Serialised form stored in trainer_state.json."""
        return json.dumps(self.__dict__, indent=1)


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch and CUDA as plain lists/tensors (loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SaveFailed(RuntimeError):
    """A checkpoint could not be written (disk full, read-only, quota, file-size limit); the partial
    directory is gone and `latest` still names the previous checkpoint. The message says where,
    why, and the bytes needed and free."""


def _is_write_failure(exc: BaseException) -> bool:
    # torch.save reports a failed write as a RuntimeError from its zip writer (inline_container.cc).
    return isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and (
        "PytorchStreamWriter" in str(exc) or "inline_container" in str(exc) or "file write failed" in str(exc)
        or "Parent directory" in str(exc)))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
    # torch's zip writer does not say why a write stopped short; the file system was full or a
    # file-size limit was reached (the two ways a plain write returns short).
    return "a write stopped short (the file system is full, or a file-size limit was reached)"


def _agree(problem: str | None) -> str | None:
    """Every rank's view of whether the save failed: the first rank's problem, or None. A collective
    every rank calls at the same point (it doubles as the barrier the save needs there)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return problem
    problems: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    found = [(rank, p) for rank, p in enumerate(problems) if p is not None]
    return None if not found else (found[0][1] if len(found) == 1 else f"{found[0][1]} (and on {len(found) - 1} more ranks)")


def _size_text(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _previous_size(ckpt_dir: Path) -> int | None:
    """Bytes of the checkpoint `latest` names (what the next save of the same run will need)."""
    tag = read_latest(ckpt_dir)
    if tag is None:
        return None
    try:
        files = json.loads((ckpt_dir / tag / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return None
    return sum(meta["size"] for meta in files.values())


def _failure(tag_dir: Path, reason: str) -> SaveFailed:
    """The one message a failed save ends with. Rank 0, which prints it, measures the partial
    directory and the free space, then removes the directory; the other ranks only raise (measuring
    there too would race with the removal)."""
    if dist.is_initialized() and dist.get_rank() != 0:
        return SaveFailed(f"could not save checkpoint {tag_dir}: {reason}")
    ckpt_dir = tag_dir.parent
    written = sum(f.stat().st_size for f in tag_dir.rglob("*") if f.is_file()) if tag_dir.is_dir() else 0
    try:
        free = _size_text(shutil.disk_usage(ckpt_dir).free)
    except OSError:
        free = "unknown"
    shutil.rmtree(tag_dir, ignore_errors=True)
    previous = _previous_size(ckpt_dir)
    if previous:
        needed = f"~{_size_text(previous)} (the size of the previous checkpoint)"
    elif written:
        needed = f"more than the {_size_text(written)} written before the failure"
    else:
        needed = "unknown (no earlier checkpoint)"
    latest = read_latest(ckpt_dir)
    kept = f"`latest` still names {latest}" if latest else "no earlier checkpoint exists"
    return SaveFailed(f"could not save checkpoint {tag_dir}: {reason}; needed {needed}, {free} free on "
                      f"{ckpt_dir}. The partial directory was removed and {kept}; free space (or set "
                      f"checkpoint.dir elsewhere) and run the same command again to continue from there")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(engine, ckpt_dir: Path, state: TrainerState, config_yaml: str, keep_last: int,
                    log=print) -> Path:
    """Write checkpoint `step_<state.step>`; every rank must call this.

    Order matters for crash safety: DeepSpeed files and per-rank RNG, then (rank 0) trainer state,
    config and manifest, and only after every rank reported success, the `latest` pointer. A crash
    at any point leaves `latest` at the previous complete checkpoint. A write that fails on any rank
    (disk full, read-only, quota, file size) raises SaveFailed on every rank, after rank 0 removed
    the partial directory; a save that cannot fit the free space of the previous one's size is
    refused before anything is written.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    tag = tag_for_step(state.step)
    tag_dir = ckpt_dir / tag
    started = time.perf_counter()
    problem = None
    if rank == 0:
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists():  # left by a save that crashed; never mix its files with this one
                shutil.rmtree(tag_dir)
            tag_dir.mkdir()  # a read-only or full file system fails here, before any rank writes
            previous = _previous_size(ckpt_dir)
            free = shutil.disk_usage(ckpt_dir).free
            if previous is not None and free < previous:
                problem = f"not enough space: {_size_text(free)} free, the previous checkpoint took {_size_text(previous)}"
        except OSError as exc:
            problem = _reason(exc)
    problem = _agree(problem)
    if problem is not None:
        raise _failure(tag_dir, problem)
    deepspeed_done = False
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)
        deepspeed_done = True
        (tag_dir / "rng").mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tag_dir / "rng" / f"rank_{rank:05d}.pt")
    except (OSError, RuntimeError) as exc:
        if not _is_write_failure(exc):
            raise
        problem = _reason(exc)
        if not deepspeed_done and dist.is_initialized():
            # DeepSpeed's save ends with a barrier; ranks whose writes succeeded wait in it.
            dist.barrier()
    problem = _agree(problem)
    if problem is None and rank == 0:
        try:
            atomic_write_text(tag_dir / TRAINER_STATE, state.to_json())
            atomic_write_text(tag_dir / CONFIG_FILE, config_yaml)
            manifest = write_manifest(tag_dir)
            atomic_write_text(ckpt_dir / LATEST, tag + "\n")
        except OSError as exc:
            problem = _reason(exc)
            for leftover in ckpt_dir.glob(f".{LATEST}.tmp.*"):
                leftover.unlink(missing_ok=True)
    problem = _agree(problem)
    if problem is not None:
        raise _failure(tag_dir, problem)
    if rank == 0:
        removed = prune(ckpt_dir, keep_last, tag)
        size = sum(f["size"] for f in manifest["files"].values())
        log(f"[checkpoint] saved {tag_dir} ({size / 2**20:.1f} MiB, {time.perf_counter() - started:.1f} s)"
            + (f"; removed {', '.join(removed)}" if removed else ""))
    _barrier()
    return tag_dir
