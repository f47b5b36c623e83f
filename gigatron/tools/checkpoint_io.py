"""Reading a trained model back from a gigatron checkpoint, on one process, without DeepSpeed."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from gigatron.config import Config, load_config
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.registry import build_model

_PIPE_FILE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")


def resolve_checkpoint(path: str | Path) -> Path:
    """A `step_*` tag directory from a run dir, a checkpoints dir (via `latest`) or the tag itself."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / "config.yaml").is_file() and (candidate / "trainer_state.json").is_file():
            return candidate
        latest = candidate / "latest"
        if latest.is_file():
            tag = candidate / latest.read_text().strip()
            if (tag / "config.yaml").is_file():
                return tag
    raise FileNotFoundError(f"{path} is not a gigatron checkpoint: expected a step_NNNNNNNN directory with "
                            "config.yaml, or a run/checkpoints directory with a `latest` pointer")


def _load_states(path: Path) -> dict:
    # DeepSpeed's files hold a few plain Python values besides tensors; weights_only refuses any
    # code-running object, so a hostile file cannot execute anything here.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(f"{path}: cannot be read as a weights-only checkpoint ({exc})") from exc


def _model_state(tag: Path) -> dict[str, torch.Tensor]:
    single = tag / "mp_rank_00_model_states.pt"
    pipe_files = sorted(p for p in tag.iterdir() if _PIPE_FILE.match(p.name))
    if pipe_files:
        state: dict[str, torch.Tensor] = {}
        for file in pipe_files:
            layer = int(_PIPE_FILE.match(file.name).group(1))
            for key, value in _load_states(file).items():
                state[f"{layer}.{key}"] = value
        return state
    if not single.is_file():
        raise FileNotFoundError(f"{tag}: no mp_rank_00_model_states.pt or layer_*-model_states.pt files")
    return _load_states(single)["module"]


def load_checkpoint_model(path: str | Path) -> tuple[Config, nn.Sequential]:
    """The run's config and its model (TP=1, CPU, fp32) with the checkpoint's weights."""
    tag = resolve_checkpoint(path)
    cfg = load_config(tag / "config.yaml")
    if cfg.parallel.tp > 1:
        raise ValueError(f"{tag} was written with parallel.tp={cfg.parallel.tp}: TP-sharded checkpoints must be "
                         "merged before they can be loaded on one process (not supported yet)")
    model = build_model(cfg.model, LayerFactory())
    state = {k: v.float() for k, v in _model_state(tag).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{tag}: weights do not match model.family={type(cfg.model).family}: missing "
                         f"{missing[:8]}, unexpected {unexpected[:8]}")
    model.eval()
    return cfg, model
