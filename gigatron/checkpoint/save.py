"""Saving a run: DeepSpeed's model/optimizer files plus everything else a run needs to continue
bitwise-identically (loader counters, RNG states, step/token counters, config)."""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gigatron.checkpoint.files import (
    LATEST,
    atomic_write_text,
    prune,
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


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(engine, ckpt_dir: Path, state: TrainerState, config_yaml: str, keep_last: int,
                    log=print) -> Path:
    """Write checkpoint `step_<state.step>`; every rank must call this.

    Order matters for crash safety: DeepSpeed files and per-rank RNG, then (rank 0) trainer state,
    config and manifest, and only after a barrier proves every rank finished, the `latest` pointer.
    A crash at any point leaves `latest` at the previous complete checkpoint.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    tag = tag_for_step(state.step)
    tag_dir = ckpt_dir / tag
    started = time.perf_counter()
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tag_dir.exists():  # left by a save that crashed; never mix its files with this one
            shutil.rmtree(tag_dir)
    _barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)
    (tag_dir / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), tag_dir / "rng" / f"rank_{rank:05d}.pt")
    _barrier()
    if rank == 0:
        atomic_write_text(tag_dir / TRAINER_STATE, state.to_json())
        atomic_write_text(tag_dir / CONFIG_FILE, config_yaml)
        manifest = write_manifest(tag_dir)
        atomic_write_text(ckpt_dir / LATEST, tag + "\n")
        removed = prune(ckpt_dir, keep_last, tag)
        size = sum(f["size"] for f in manifest["files"].values())
        log(f"[checkpoint] saved {tag_dir} ({size / 2**20:.1f} MiB, {time.perf_counter() - started:.1f} s)"
            + (f"; removed {', '.join(removed)}" if removed else ""))
    _barrier()
    return tag_dir
