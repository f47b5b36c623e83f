"""Model families by name: each module defines a ModelSpec bundling config, layers, FLOPs and size.

Following torchtitan's ModelSpec, the trainer never imports a model module directly; it asks the
registry, so adding a family is one module plus one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from gigatron.models.layers.factory import LayerFactory

# A layer recipe (class, args, kwargs): built directly for one process, or wrapped in DeepSpeed's
# LayerSpec so that each pipeline stage builds only its own layers.
LayerRecipe = tuple[type[nn.Module], tuple[Any, ...], dict[str, Any]]

# family -> (module, attribute holding its ModelSpec)
_FAMILY_MODULES: dict[str, tuple[str, str]] = {
    "gpt": ("gigatron.models.gpt", "SPEC"),
    "hybrid": ("gigatron.models.hybrid", "SPEC"),
    "mamba2": ("gigatron.models.hybrid", "MAMBA2_SPEC"),
    "mamba": ("gigatron.models.hybrid", "MAMBA_SPEC"),
    "tokenformer": ("gigatron.models.tokenformer", "SPEC"),
    "fit": ("gigatron.models.fit", "SPEC"),
    "fit_diffusion": ("gigatron.models.fit", "DIFFUSION_SPEC"),
    "t2i": ("gigatron.models.t2i", "SPEC"),
}


@dataclass(frozen=True)
class ModelSpec:
    """What the trainer needs to know about a model family."""

    family: str
    config_cls: type
    # The model as a flat list of layers: pipeline stages cut it, one process chains it. None for
    # models that take several inputs (image models) and are built whole by `build`.
    layer_recipes: Callable[[Any, LayerFactory], list[LayerRecipe]] | None
    # Model FLOPs per trained token (forward + backward) at a sequence length, for MFU.
    flops_per_token: Callable[[Any, int], float]
    # Analytical parameter count (checked against the built model in tests).
    num_params: Callable[[Any], int]
    # Share weights between layers after a single-process build (e.g. tied embeddings); optional.
    tie_weights: Callable[[Any, nn.Sequential], None] | None = None
    # The training objective (see gigatron.objectives).
    task: str = "lm"
    # Models without a layer list: (config, factory) -> the whole model (no pipeline parallelism).
    build: Callable[[Any, LayerFactory], nn.Module] | None = None
    # Tokens one sample contributes (for tokens/s, MFU and train.tokens): (model cfg, data cfg) -> int.
    # None: data.seq_len.
    tokens_per_sample: Callable[[Any, Any], int] | None = None
    # Image models conditioned on text: samples carry caption token ids.
    reads_captions: bool = False

    def sample_tokens(self, model_cfg: Any, data_cfg: Any) -> int:
        """Tokens per training sample under these configs."""
        if self.tokens_per_sample is None:
            return data_cfg.seq_len
        return self.tokens_per_sample(model_cfg, data_cfg)


def model_families() -> list[str]:
    """Names accepted as `model.family`."""
    return sorted(_FAMILY_MODULES)


def get_model_spec(family: str) -> ModelSpec:
    """The spec of a registered family; raises KeyError naming the valid ones."""
    if family not in _FAMILY_MODULES:
        raise KeyError(f"unknown model family {family!r}; registered: {', '.join(model_families())}")
    module, attribute = _FAMILY_MODULES[family]
    return getattr(importlib.import_module(module), attribute)


def build_model(model_cfg: Any, factory: LayerFactory) -> nn.Module:
    """The whole model on one pipeline stage: the family's `build`, or all its layers in one
    `nn.Sequential` whose names are global layer indices."""
    spec = get_model_spec(type(model_cfg).family)
    if spec.build is not None:
        return spec.build(model_cfg, factory)
    model = nn.Sequential(*[cls(*args, **kwargs) for cls, args, kwargs in spec.layer_recipes(model_cfg, factory)])
    if spec.tie_weights is not None:
        spec.tie_weights(model_cfg, model)
    return model
