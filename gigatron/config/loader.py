"""YAML (with `base:` inheritance) + `--set a.b=c` overrides -> a typed `Config`, and back to plain data."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from gigatron.config.coerce import build_dataclass, suggest
from gigatron.config.errors import ConfigError
from gigatron.config.families import family_names, model_config_class
from gigatron.config.schema import Config


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=1e-3' -> (['train', 'lr'], 0.001); the value is read as YAML so types survive."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key component in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a copy of `raw`; sections that do not exist yet are created."""
    out = _deep_copy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(parts[: i + 1])}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# Keys that moved into the section of the feature that owns them: old dotted key -> new one.
MOVED_KEYS = {
    "train.grow_from": "grow.checkpoint",
    "train.grow_init": "grow.init",
    "train.grow_optimizer": "grow.optimizer",
    "train.matformer_mode": "matformer.mode",
    "train.matformer_weights": "matformer.weights",
    "train.matformer_probabilities": "matformer.probabilities",
    "train.flow": "diffusion",
    "data.image_size": "images.image_size",
    "data.default_images": "images.default_images",
    "data.default_max_shapes": "images.default_max_shapes",
    "data.classes": "images.classes",
    "data.valid_images": "images.valid_images",
    "data.caption_len": "images.caption_len",
    "data.caption_vocab_size": "images.caption_vocab_size",
    "data.aspect_buckets": "images.aspect_buckets",
    "data.bucket_multiple": "images.bucket_multiple",
    "data.max_aspect_ratio": "images.max_aspect_ratio",
    "data.latents": "images.latents",
}


# Keys replaced by a more general one with other values: old dotted key -> (new key, old -> new value).
REPLACED_KEYS = {
    "model.checkpoint_blocks": ("train.recompute", {True: "full", False: "none"}),
}


def _new_place(old: str, value: Any) -> tuple[str, Any]:
    """Where a moved or replaced key's value goes, and the value it becomes there."""
    if old in REPLACED_KEYS:
        new, values = REPLACED_KEYS[old]
        return new, values.get(value, value)
    return MOVED_KEYS[old], value


def _moved_message(old: str, value: Any) -> str:
    new, converted = _new_place(old, value)
    if old in REPLACED_KEYS:
        return f"{old} has been replaced by {new} ({old}: {value!r} is {new}: {converted!r}; see docs/memory.md)"
    return f"{old} has moved to {new} (its feature's own section; see docs/config.md)"


def _pop_moved(raw: dict[str, Any]) -> dict[str, Any]:
    """Remove every moved or replaced key from `raw`; returns {old key: value}."""
    found = {}
    for old in [*MOVED_KEYS, *REPLACED_KEYS]:
        section, key = old.split(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            found[old] = raw[section].pop(key)
    return found


def migrate_moved_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with keys written before they moved (checkpoints of earlier versions) at their new places."""
    raw = _deep_copy(raw)
    for old, original in _pop_moved(raw).items():
        new, value = _new_place(old, original)
        parts = new.split(".")
        if len(parts) == 1:
            raw[parts[0]] = merge_configs(value, raw.get(parts[0]) or {})
        else:
            raw.setdefault(parts[0], {}).setdefault(parts[1], value)
    return raw


def config_from_dict(raw: dict[str, Any], migrate: bool = False) -> Config:
    """Build a `Config`; `model.family` chooses the model dataclass from the family registry.

    A key that moved to a feature's own section (MOVED_KEYS) is an error naming its new place,
    unless `migrate` (reading a checkpoint written before the move) puts it there.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(raw).__name__}")
    raw = migrate_moved_keys(raw) if migrate else _deep_copy(raw)
    moved = _pop_moved(raw)  # raw is our copy; the keys it removes are reported, not used
    if moved:
        raise ConfigError("; ".join(_moved_message(old, value) for old, value in moved.items()))
    model_raw = raw.pop("model", None)
    if not isinstance(model_raw, dict) or "family" not in model_raw:
        raise ConfigError(f"model.family is required (registered families: {', '.join(family_names())})")
    family = model_raw.pop("family")
    if not isinstance(family, str):
        raise ConfigError(f"model.family must be a family name, got {family!r} (registered: {', '.join(family_names())})")
    model = build_dataclass(model_config_class(family), model_raw, "model")
    valid_sections = [f.name for f in dataclasses.fields(Config) if f.name != "model"]
    for key in raw:
        if key not in valid_sections:
            raise ConfigError(f"unknown key '{key}'{suggest(key, valid_sections + ['model'])}")
    cfg = build_dataclass(Config, {**raw, "model": None}, "")
    cfg.model = model
    return cfg


BASE_KEY = "base"


def merge_configs(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """`child` over `base`: mappings merge key by key, any other value (list, scalar, null) replaces."""
    out = _deep_copy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = _deep_copy(value)
    return out


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One YAML config as plain data, with its `base:` files (paths relative to it) merged underneath.

    `base` is one path or a list of paths; later bases override earlier ones and the file itself
    overrides them all. The result holds no `base` key.
    """
    path = Path(path)
    where = " -> ".join(str(p) for p in (*_chain, path))
    if path.is_dir():
        yamls = sorted(p.name for p in path.glob("*.yaml"))[:5]
        raise ConfigError(f"config file {str(path)!r} is a directory; pass a YAML file"
                          + (f" (here: {', '.join(yamls)})" if yamls else "") + (f" (base of {where})" if _chain else ""))
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist" + (f" (base of {where})" if _chain else ""))
    if path.resolve() in {p.resolve() for p in _chain}:
        raise ConfigError(f"{_chain[0]}: `base` files form a cycle: {where}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    raw = loaded or {}
    bases = raw.pop(BASE_KEY, None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: base: {bases!r} must be a path (relative to {path.parent}) or a list of paths")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = merge_configs(merged, read_config_file(path.parent / base, (*_chain, path)))
    return merge_configs(merged, raw)


def load_config(path: str | Path | None, overrides: list[str] | None = None, migrate: bool = False) -> Config:
    """Read a YAML file (with its `base:` files; or start from nothing when `path` is None) and apply overrides.

    `migrate`: accept keys that have moved since (see `config_from_dict`), for checkpoints' configs.
    """
    raw = read_config_file(path) if path is not None else {}
    try:
        if any(parse_override(text)[0][0] == BASE_KEY for text in overrides or []):
            raise ConfigError(f"--set {BASE_KEY}=...: `base` is read from YAML files only; name the base in the file "
                              "passed to --config")
        return config_from_dict(apply_overrides(raw, overrides or []), migrate=migrate)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data (lists, not tuples) that `config_from_dict` reads back to an equal `Config`."""
    out = _plain(dataclasses.asdict(cfg))
    out["model"] = {"family": type(cfg.model).family, **out["model"]}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, as printed at start and saved with every checkpoint."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
