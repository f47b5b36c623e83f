"""Model families by name: where each family's config dataclass and ModelSpec live.

The registry sits below `config` and names modules by string, so reading a config never imports a
model and no package imports the one above it. A family is a folder, `gigatron/models/<family>/`
(docs/adding-a-family.md); adding a built-in one is one line in `BUILTIN_FAMILIES`. A family that
lives in another package registers itself through the `gigatron.families` entry-point group of its
distribution (`toy = "toy_family:FAMILY"`, the value a `Family`), or in-process with
`register_family`; it is then as good as a built-in one: trained, checkpointed, converted and
resumed on any layout.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from gigatron.config.errors import ConfigError

ENTRY_POINT_GROUP = "gigatron.families"


@dataclass(frozen=True)
class Family:
    """Where one family lives: `module:attribute` of its config dataclass and of its ModelSpec.

    The config module should be light to import (it is read for every config); the spec module
    holds the model and may import torch.
    """

    config: str
    spec: str


BUILTIN_FAMILIES: dict[str, Family] = {
    "gpt": Family("gigatron.models.gpt.config:GPTConfig", "gigatron.models.gpt.model:SPEC"),
    "hybrid": Family("gigatron.models.hybrid.config:HybridConfig", "gigatron.models.hybrid.model:SPEC"),
    "mamba2": Family("gigatron.models.hybrid.config:Mamba2Config", "gigatron.models.hybrid.model:MAMBA2_SPEC"),
    "mamba": Family("gigatron.models.hybrid.config:MambaConfig", "gigatron.models.hybrid.model:MAMBA_SPEC"),
    "tokenformer": Family("gigatron.models.tokenformer.config:TokenFormerConfig",
                          "gigatron.models.tokenformer.model:SPEC"),
    "fit": Family("gigatron.models.fit.config:FITConfig", "gigatron.models.fit.model:SPEC"),
    "fit_diffusion": Family("gigatron.models.fit.config:FITDiffusionConfig",
                            "gigatron.models.fit.model:DIFFUSION_SPEC"),
    "t2i": Family("gigatron.models.t2i.config:T2IConfig", "gigatron.models.t2i.model:SPEC"),
}

_registered: dict[str, Family] = {}


def register_family(name: str, family: Family) -> None:
    """Make `name` a valid `model.family` in this process (entry points do it for every process)."""
    if name in BUILTIN_FAMILIES:
        raise ValueError(f"model family {name!r} is built in; choose another name")
    _registered[name] = family


def _plugin_families() -> dict[str, Family]:
    found = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in BUILTIN_FAMILIES:
            raise ConfigError(f"entry point {point.name} = {point.value} ({ENTRY_POINT_GROUP}) reuses the name of "
                              "a built-in model family; rename it")
        found[point.name] = point
    return found


def family_names() -> list[str]:
    """Names accepted as `model.family`: built in, registered, and from installed plugins."""
    return sorted({*BUILTIN_FAMILIES, *_registered, *_plugin_families()})


def get_family(name: str) -> Family:
    """The family called `name`; a ConfigError names the valid ones."""
    family = BUILTIN_FAMILIES.get(name) or _registered.get(name)
    if family is not None:
        return family
    point = _plugin_families().get(name)
    if point is None:
        from gigatron.config.coerce import suggest

        raise ConfigError(f"model.family: unknown family {name!r}{suggest(str(name), family_names())}")
    family = point.load()
    if not isinstance(family, Family):
        raise ConfigError(f"entry point {name} = {point.value} ({ENTRY_POINT_GROUP}) must name a "
                          f"gigatron.config.families.Family, not {type(family).__name__}")
    _registered[name] = family
    return family


def load_attribute(path: str) -> Any:
    """The object at `module:attribute`; an error names the path when it is missing."""
    module, _, attribute = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model family entry {path!r} cannot be loaded: {exc}") from exc


def model_config_class(name: str) -> type:
    """The dataclass of the `model:` section of family `name`."""
    return load_attribute(get_family(name).config)
