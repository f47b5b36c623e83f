"""Reading a trained model back from a gigatron checkpoint, on one process, without DeepSpeed.

A checkpoint tag (`step_NNNNNNNN/`) holds the run's `config.yaml` and DeepSpeed's model files:
`mp_rank_00_model_states.pt` (key "module" = the model's state dict) or, for pipeline-parallel
runs, one `layer_XX-model_00-model_states.pt` per layer whose keys are relative to layer XX.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from gigatron.config import Config, load_config
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.registry import build_model

SINGLE_FILE = "mp_rank_00_model_states.pt"
_PIPE_FILE = re.compile(r"^layer_(\d+)-model_00-model_states\.pt$")
_ANY_TP_PIPE_FILE = re.compile(r"^layer_\d+-model_(\d+)-model_states\.pt$")
_HOW_TO_POINT = ("pass a run directory, its checkpoints directory (with a `latest` file) or a "
                 "step_NNNNNNNN directory holding config.yaml")


def resolve_checkpoint(path: str | Path) -> Path:
    """The `step_*` tag directory meant by a run dir, a checkpoints dir (via `latest`) or the tag itself."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; {_HOW_TO_POINT}")
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


def _load_file(path: Path) -> dict:
    # weights_only refuses any object whose unpickling could run code, so a hostile checkpoint
    # cannot execute anything here; DeepSpeed's model files hold only tensors and plain values.
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types; re-raised naming the file
        raise ValueError(f"{path}: cannot be read as a weights-only checkpoint file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a dict of states, found {type(loaded).__name__}")
    return loaded


def _tensors(path: Path, state: object) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return dict(state)


def read_model_state(tag: Path) -> dict[str, torch.Tensor]:
    """The model's state dict as in one process (keys `<global layer index>.<param>`)."""
    pipe_files = sorted(p for p in tag.iterdir() if _PIPE_FILE.match(p.name))
    if pipe_files:
        state: dict[str, torch.Tensor] = {}
        for file in pipe_files:
            layer = int(_PIPE_FILE.match(file.name).group(1))
            # DeepSpeed names each file by the layer's index in the whole pipeline, so prefixing it
            # gives the key of the same parameter in the single-process nn.Sequential.
            state.update({f"{layer}.{key}": value for key, value in _tensors(file, _load_file(file)).items()})
        return state
    single = tag / SINGLE_FILE
    if not single.is_file():
        raise FileNotFoundError(f"{tag}: no {SINGLE_FILE} and no layer_*-model_00-model_states.pt files; "
                                "is this a complete checkpoint?")
    states = _load_file(single)
    if "module" not in states:
        raise ValueError(f"{single}: no 'module' entry (found {sorted(states)[:8]})")
    return _tensors(single, states["module"])


def _check_layout(tag: Path, cfg: Config) -> None:
    tp_ranks = {int(m.group(1)) for p in tag.iterdir() if (m := _ANY_TP_PIPE_FILE.match(p.name))}
    # Pipeline runs also write mp_rank_01.. (one per stage), so only the layer files tell TP apart.
    if cfg.parallel.tp > 1 or len(tp_ranks) > 1:
        raise ValueError(f"{tag} was written with parallel.tp={cfg.parallel.tp}: TP-sharded checkpoints must be "
                         "merged into one TP rank before they can be loaded (not supported yet); "
                         "train with parallel.tp=1 or merge the shards")
    if cfg.parallel.zero_stage == 3:
        raise ValueError(f"{tag} was written with parallel.zero_stage=3, whose model file holds only parameter "
                         "partitions; gather them with DeepSpeed's zero_to_fp32.py first (not supported yet)")


def _listed(keys: list[str], limit: int = 10) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _match(tag: Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    # Checked by hand rather than by load_state_dict so that one message lists every problem.
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})" for k, v in expected.items()
                   if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"{tag}: the weights do not match the model its config.yaml describes; "
                         f"missing: {_listed(missing)}; unexpected: {_listed(unexpected)}; "
                         f"wrong shape: {_listed(wrong_shape)}")


def load_checkpoint_model(path: str | Path) -> tuple[Config, nn.Sequential]:
    """The run's config and its model (TP=1, CPU, fp32, eval mode) with the checkpoint's weights."""
    tag = resolve_checkpoint(path)
    cfg = load_config(tag / "config.yaml")
    _check_layout(tag, cfg)
    model = build_model(cfg.model, LayerFactory())
    state = read_model_state(tag)
    _match(tag, model, state)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.eval()
    return cfg, model


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
