"""Reading a trained model back from a gigatron checkpoint, on one process, without DeepSpeed.

Accepts a run directory, its checkpoints directory (via `latest`), a `step_NNNNNNNN` tag written by
any layout (TP, PP, ZeRO 0-3; see `native`) or a consolidated directory (see
`consolidated`). Files are only ever read with safetensors or weights-only torch.load.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint, LogicalCheckpoint, is_consolidated
from gigatron.checkpoint.native import NativeCheckpoint
from gigatron.config import Config
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.registry import build_model

_HOW_TO_POINT = ("pass a run directory, its checkpoints directory (with a `latest` file), a step_NNNNNNNN "
                 "directory holding config.yaml, or a consolidated checkpoint directory")


def resolve_checkpoint(path: str | Path) -> Path:
    """The tag or consolidated directory meant by a run dir, a checkpoints dir (via `latest`) or itself."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; {_HOW_TO_POINT}")
    if is_consolidated(path):
        return path
    if (path / "config.yaml").is_file() and (path / "trainer_state.json").is_file():
        return path
    for candidate in (path, path / "checkpoints"):
        latest = candidate / "latest"
        if latest.is_file():
            tag = candidate / latest.read_text().strip()
            if not (tag / "config.yaml").is_file():
                raise FileNotFoundError(f"{latest} names {tag.name}, but {tag}/config.yaml is missing "
                                        "(deleted or an unfinished save); pass an intact step_* directory")
            return tag
    raise FileNotFoundError(f"{path} is not a gigatron checkpoint: no config.yaml and no latest file; {_HOW_TO_POINT}")


def open_checkpoint(path: str | Path, checksums: bool = True, verified: bool = False) -> LogicalCheckpoint:
    """Logical (layout-free) view of any gigatron checkpoint, checked against its manifest before a
    byte of it is used: sizes always, sha256 with `checksums` (DamagedCheckpoint names the file).
    `verified`: the caller has checked it (one rank for all)."""
    resolved = resolve_checkpoint(path)
    kind = ConsolidatedCheckpoint if is_consolidated(resolved) else NativeCheckpoint
    return kind(resolved, checksums=checksums, verified=verified)


def _listed(keys: list[str], limit: int = 10) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_parameters_match(ckpt: LogicalCheckpoint, model: nn.Module) -> None:
    """Raise, listing every problem, unless `ckpt` stores exactly the model's parameters."""
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    stored = ckpt.stored_names()
    missing = sorted(set(expected) - stored)
    unexpected = sorted(stored - set(expected))
    wrong_shape = [f"{k} {ckpt.plans[k].shape} (model: {v})" for k, v in expected.items()
                   if k in ckpt.plans and ckpt.plans[k].shape != v]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"{ckpt.path}: the weights do not match the model its config.yaml describes; "
                         f"missing: {_listed(missing)}; unexpected: {_listed(unexpected)}; "
                         f"wrong shape: {_listed(wrong_shape)}")


def model_from_checkpoint(ckpt: LogicalCheckpoint) -> nn.Sequential:
    """The TP=1 fp32 model (eval mode) with the checkpoint's master weights."""
    model = build_model(ckpt.cfg.model, LayerFactory())
    check_parameters_match(ckpt, model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(ckpt.tensor(name))
    return model.eval()


def load_checkpoint_model(path: str | Path, checksums: bool = True) -> tuple[Config, nn.Sequential]:
    """The run's config and its model (TP=1, CPU, fp32, eval mode) with the checkpoint's weights."""
    ckpt = open_checkpoint(path, checksums)
    return ckpt.cfg, model_from_checkpoint(ckpt)


def training_manifest(cfg: Config) -> Path:
    """The manifest.json of the run's (first) training dataset; found without building anything."""
    # Reading a checkpoint must never start a download or tokenization, so unlike
    # data.build.dataset_roots this only computes where the default dataset would be.
    if cfg.data.source == "default":
        from gigatron.data.default_dataset import default_dataset_dir

        return default_dataset_dir(cfg.data.cache_dir, cfg.data.seq_len, cfg.data.default_vocab_size) / "manifest.json"
    if not cfg.data.datasets:
        raise ValueError("the checkpoint's config has no data.datasets, so its tokenizer is unknown")
    return Path(cfg.data.datasets[0].path) / "manifest.json"
