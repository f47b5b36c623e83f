"""What the trainer needs to know about a model family (`ModelSpec`), and building one by name.

Following torchtitan's ModelSpec, the trainer never imports a model module directly: it asks for
the spec of `model.family`, which `gigatron.config.families` locates (a family is a folder,
`gigatron/models/<family>/`, plus one registry line; docs/adding-a-family.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from gigatron.config.families import family_names, get_family, load_attribute
from gigatron.models.hf_adapter import HFAdapter
from gigatron.models.layers.factory import LayerFactory

# A layer recipe (class, args, kwargs): built directly for one process, or wrapped in DeepSpeed's
# LayerSpec so that each pipeline stage builds only its own layers.
LayerRecipe = tuple[type[nn.Module], tuple[Any, ...], dict[str, Any]]

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
    # Tokens one sample contributes (for tokens/s, MFU and train.tokens): (model cfg, run cfg) -> int.
    # None: data.seq_len.
    tokens_per_sample: Callable[[Any, Any], int] | None = None
    # Image models conditioned on text: samples carry caption token ids.
    reads_captions: bool = False
    # The mapping to a transformers model class (export-hf, import-hf); None: not exportable.
    hf_adapter: HFAdapter | None = None

    def sample_tokens(self, run: Any) -> int:
        """Tokens per training sample of the run config `run`."""
        if self.tokens_per_sample is None:
            return run.data.seq_len
        return self.tokens_per_sample(run.model, run)


def model_families() -> list[str]:
    """Names accepted as `model.family`."""
    return family_names()


def get_model_spec(family: str) -> ModelSpec:
    """The spec of a registered family; a ConfigError names the valid ones."""
    spec = load_attribute(get_family(family).spec)
    if not isinstance(spec, ModelSpec) or spec.family != family:
        raise TypeError(f"{get_family(family).spec} must be the ModelSpec of family {family!r}, got {spec!r:.80}")
    return spec


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
