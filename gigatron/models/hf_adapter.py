"""What a family needs to map itself to and from a transformers model (`gigatron export-hf`/`import-hf`).

A family that has a transformers equivalent gives its ModelSpec an `HFAdapter` (in its folder's
`hf.py`); `gigatron.checkpoint.hf_export` and `hf_import` do the rest (tensors, safetensors,
verification against transformers' logits) for every family alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# (transformers name, our name) of every tensor.
NamePairs = list[tuple[str, str]]


class ExportError(ValueError):
    """The model cannot be expressed in the target transformers class; names the config key."""


class UnsupportedModelError(ValueError):
    """The transformers model uses a feature our model family cannot express; names the config key."""


@dataclass(frozen=True)
class HFAdapter:
    """One family's mapping to one transformers model class."""

    model_type: str  # transformers' config.model_type (e.g. "llama")
    # (our model section, bos/eos/pad ids) -> (transformers config, name pairs); raises ExportError.
    to_hf: Callable[[Any, dict[str, int | None]], tuple[Any, NamePairs]]
    # transformers config -> our `model:` section as a dict (family included); raises UnsupportedModelError.
    from_hf: Callable[[Any], dict[str, Any]]


def mamba2_names(prefix: str, ours: str) -> list[tuple[str, str]]:
    return [(f"{prefix}.{theirs}", f"{ours}.{mine}") for theirs, mine in (
        ("in_proj.weight", "in_proj.weight"), ("conv1d.weight", "conv_weight"), ("conv1d.bias", "conv_bias"),
        ("dt_bias", "dt_bias"), ("A_log", "A_log"), ("D", "D"), ("norm.weight", "norm.weight"),
        ("out_proj.weight", "out_proj.weight"))]


def lm_end_names(last: int, embed: str, final_norm: str, tied: bool) -> list[tuple[str, str]]:
    # Tied models are written untied (lm_head = a copy of the embedding): the same function, and it
    # does not depend on how each transformers class re-ties weights when loading.
    head = "0.tokens.weight" if tied else f"{last}.output.weight"
    return [(embed, "0.tokens.weight"), (final_norm, f"{last}.norm.weight"), ("lm_head.weight", head)]


def uniform_ffn_size(cfg: Any) -> int:
    """transformers' configs have one intermediate_size; a Mix'n'Match model with mixed widths has none."""
    sizes = set(cfg.ffn_sizes) or {cfg.ffn_size}
    if len(sizes) > 1:
        raise ExportError(f"model.ffn_hidden_sizes={cfg.ffn_hidden_sizes}: transformers' config has a single "
                          "intermediate_size, so per-layer FFN widths cannot be exported; extract a uniform "
                          "submodel (gigatron matformer extract --widths G) to export")
    return sizes.pop()


def require(hf: Any, key: str, ok: bool, valid: str) -> None:
    if not ok:
        raise UnsupportedModelError(f"config.json {key}={getattr(hf, key, None)!r} cannot be represented; valid: {valid}")
