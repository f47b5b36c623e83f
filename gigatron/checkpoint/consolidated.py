"""The consolidated checkpoint: one layout-free directory any layout can resume from.

    config.yaml            the run's resolved config (its `parallel` section only records the source)
    config.json            the same config as JSON
    trainer_state.json     step, tokens, data-loader counters, tokenizer fingerprint (as in every tag)
    consolidated.json      format, AdamW step counter, source layout, rank 0's RNG states
    model.safetensors      fp32 master weights by logical name (`<global layer index>.<param>`)
    exp_avg.safetensors    AdamW first moments, same names and shapes (absent before the first step)
    exp_avg_sq.safetensors AdamW second moments
    manifest.json          size and sha256 of every other file

Written one tensor at a time (see `safetensors_stream`); read lazily with safetensors' `safe_open`.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gigatron.checkpoint.files import atomic_write_text, require_intact, write_manifest
from gigatron.checkpoint.native import MOMENTS
from gigatron.checkpoint.param_plan import ParamPlan, param_plans
from gigatron.checkpoint.safetensors_stream import StreamingSafetensorsWriter
from gigatron.config import Config, config_to_dict, config_to_yaml, load_config

FORMAT = "gigatron-consolidated/1"
MARKER = "consolidated.json"
WEIGHTS_FILE = "model.safetensors"


class LogicalCheckpoint(Protocol):
    """What conversion and cross-layout resume need from any checkpoint, native or consolidated."""

    path: Path
    cfg: Config
    trainer_state: dict[str, Any]
    plans: dict[str, ParamPlan]
    has_optimizer: bool
    optimizer_step: int
    rng: dict[str, Any] | None
    layout: dict[str, Any]

    def tensor(self, name: str, key: str | None = None) -> torch.Tensor: ...

    def model_weight(self, name: str) -> torch.Tensor: ...

    def stored_names(self) -> set[str]: ...


def is_consolidated(path: Path) -> bool:
    """Whether `path` is a consolidated checkpoint directory."""
    return (Path(path) / MARKER).is_file()


def rng_to_json(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """RNG states (see gigatron.checkpoint.save.rng_state) as JSON values."""
    if state is None:
        return None
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {"python": [version, list(internal), gauss],
            "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": state["torch"].tolist()}


def rng_from_json(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Inverse of `rng_to_json`."""
    if value is None:
        return None
    return {"python": value["python"], "numpy": value["numpy"],
            "torch": torch.tensor(value["torch"], dtype=torch.uint8)}


class ConsolidatedCheckpoint:
    """Reader of a consolidated directory with the same interface as NativeCheckpoint."""

    kind = "consolidated"

    def __init__(self, path: Path, checksums: bool = True, verified: bool = False) -> None:
        """Open `path` after checking it against its manifest (sizes, and sha256 with `checksums`),
        unless the caller has (`verified`); DamagedCheckpoint names a file that does not match."""
        self.path = Path(path)
        if not verified:
            require_intact(self.path, checksums)
        self.meta = json.loads((self.path / MARKER).read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{self.path / MARKER}: format {self.meta.get('format')!r}, this gigatron reads {FORMAT!r}")
        self.cfg: Config = load_config(self.path / "config.yaml", migrate=True)
        self.trainer_state: dict[str, Any] = json.loads((self.path / "trainer_state.json").read_text())
        self.plans: dict[str, ParamPlan] = param_plans(self.cfg.model)
        self.has_optimizer = all((self.path / f"{key}.safetensors").is_file() for key in MOMENTS)
        self.optimizer_step = int(self.meta.get("optimizer_step", 0))
        self.rng = rng_from_json(self.meta.get("rng"))
        self.layout = self.meta.get("source_layout", {})

    @cached_property
    def _files(self) -> dict[str | None, Any]:
        from safetensors import safe_open

        files = {None: safe_open(self.path / WEIGHTS_FILE, framework="pt")}
        if self.has_optimizer:
            files.update({key: safe_open(self.path / f"{key}.safetensors", framework="pt") for key in MOMENTS})
        return files

    def tensor(self, name: str, key: str | None = None) -> torch.Tensor:
        """Logical fp32 weight (`key` None) or AdamW moment of `name`."""
        if key is not None and not self.has_optimizer:
            raise KeyError(f"{self.path}: holds no optimizer moments")
        handle = self._files[key]
        if name not in self._names:
            raise KeyError(f"{self.path}: no tensor {name!r} in {WEIGHTS_FILE if key is None else key + '.safetensors'}")
        return handle.get_tensor(name)

    @cached_property
    def _names(self) -> set[str]:
        return set(self._files[None].keys())  # safetensors' handle has keys(), not `in`

    def model_weight(self, name: str) -> torch.Tensor:
        """The weight (master and model weights are the same thing here)."""
        return self.tensor(name)

    def stored_names(self) -> set[str]:
        """Names in model.safetensors."""
        return set(self._names)


class InMemoryCheckpoint:
    """Weights held in memory (an import, a test, a benchmark) as a LogicalCheckpoint at step 0."""

    kind = "in-memory"
    has_optimizer = False
    optimizer_step = 0
    rng = None

    def __init__(self, path: Path, cfg: Config, tensors: dict[str, torch.Tensor],
                 layout: dict[str, Any] | None = None) -> None:
        self.path, self.cfg, self._tensors = Path(path), cfg, tensors
        self.plans = param_plans(cfg.model)
        self.trainer_state = {"step": 0, "tokens": 0, "loader": None, "tokenizer_fingerprint": ""}
        self.layout = layout or {}

    def tensor(self, name: str, key: str | None = None) -> torch.Tensor:
        """The weight (there are no moments)."""
        if key is not None:
            raise KeyError(f"{self.path}: holds no optimizer moments")
        return self._tensors[name]

    def model_weight(self, name: str) -> torch.Tensor:
        """The weight."""
        return self._tensors[name]

    def stored_names(self) -> set[str]:
        """Names of the held tensors."""
        return set(self._tensors)


def _check_names(source: LogicalCheckpoint) -> None:
    stored, wanted = source.stored_names(), set(source.plans)
    if stored != wanted:
        missing, extra = sorted(wanted - stored), sorted(stored - wanted)
        raise ValueError(f"{source.path}: the stored parameters do not match the model in its config.yaml; "
                         f"missing {missing[:8]}, unexpected {extra[:8]}")


def write_consolidated(source: LogicalCheckpoint, out: Path, log=print) -> Path:
    """Write `source` as a consolidated directory `out` (which must not exist or be empty).

    Everything goes to a temporary sibling directory renamed into place at the end, so `out` either
    holds a complete checkpoint or nothing.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory; choose a new output directory")
    _check_names(source)
    tmp = out.with_name(f".{out.name}.partial.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        specs = [(name, plan.shape, torch.float32) for name, plan in source.plans.items()]
        keys: list[str | None] = [None, *(MOMENTS if source.has_optimizer else ())]
        for key in keys:
            filename = WEIGHTS_FILE if key is None else f"{key}.safetensors"
            writer = StreamingSafetensorsWriter(tmp / filename, specs, {"format": FORMAT, "tensor": key or "weight"})
            for name in source.plans:
                writer.write(name, source.tensor(name, key).float())
            writer.close()
        atomic_write_text(tmp / "config.yaml", config_to_yaml(source.cfg))
        # The same config as JSON, for readers outside gigatron (the documented exchange format).
        atomic_write_text(tmp / "config.json", json.dumps(config_to_dict(source.cfg), indent=1))
        atomic_write_text(tmp / "trainer_state.json", json.dumps(source.trainer_state, indent=1))
        meta = {"format": FORMAT, "optimizer_step": source.optimizer_step, "source": str(source.path),
                "source_layout": source.layout, "rng": rng_to_json(source.rng)}
        atomic_write_text(tmp / MARKER, json.dumps(meta, indent=1))
        write_manifest(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"[convert] wrote {out}: {len(specs)} tensors" + (" with AdamW moments" if source.has_optimizer else ""))
    return out
