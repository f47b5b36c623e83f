"""TokenFormer growth: appending parameter tokens to a trained model's Pattention layers.

Each Pattention's key and value tokens get new rows; nothing else changes shape.
  preserve  new keys zero, new values ~ N(0, value std), Θ's scale kept at the old token count:
            zero keys score 0, GeLU(0) = 0, so the grown model computes exactly the old function,
            and the zero keys still learn (GeLU'(0) = 1/2 times non-zero values).
  random    the reference code: new keys ~ N(0, key std), new values as above, scale √n_new.
`gigatron.objectives.growth` applies these rules to checkpoints (`gigatron grow`, section `grow:`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from gigatron.models.layers.init import name_seed

TOKEN_COUNTS = {"qkv": "qkv_tokens", "proj": "proj_tokens", "ffn": "ffn_tokens"}
_SCALES = {"qkv": "qkv_scale_tokens", "proj": "proj_scale_tokens", "ffn": "ffn_scale_tokens"}
_FIXED = ("vocab_size", "hidden_size", "num_layers", "num_heads", "normalization", "rotary_pct", "rope_base",
          "norm_eps", "tie_embeddings")


class GrowthError(ValueError):
    """The requested growth is impossible; names the key and why."""


def token_counts(model: Any) -> dict[str, int]:
    """Parameter tokens per kind (qkv, proj, ffn) of a TokenFormer model section."""
    return {"qkv": model.qkv_tokens, "proj": model.proj_token_count, "ffn": model.ffn_tokens}


def _scales(model: Any) -> dict[str, int]:
    counts = token_counts(model)
    return {kind: getattr(model, _SCALES[kind]) or counts[kind] for kind in counts}


def grown_model_config(old: Any, target: Any, init: str) -> Any:
    """`target`'s token counts on `old`'s shape, with Θ's scale set for `init`; raises if not a growth."""
    if type(old).family != "tokenformer" or type(target).family != "tokenformer":
        raise GrowthError(f"growth needs TokenFormer checkpoints and configs (got model.family={type(old).family} -> "
                          f"{type(target).family})")
    for key in _FIXED:
        if getattr(old, key) != getattr(target, key):
            raise GrowthError(f"model.{key} differs ({getattr(old, key)!r} in the checkpoint, {getattr(target, key)!r} "
                              "requested): growth appends parameter tokens; the hidden size, depth, heads and "
                              "vocabulary stay fixed")
    old_counts, new_counts = token_counts(old), token_counts(target)
    for kind, key in TOKEN_COUNTS.items():
        if new_counts[kind] < old_counts[kind]:
            raise GrowthError(f"model.{key}={new_counts[kind]} is smaller than the checkpoint's {old_counts[kind]}: "
                              "growth can only append tokens")
    if init == "preserve" and old.normalization == "softmax_n":
        raise GrowthError("--init preserve needs model.normalization l2_norm_gelu or gelu_l2_norm: with softmax_n a "
                          "zero key scores exp(0) = 1, which changes the function; use --init random")
    if init not in ("preserve", "random"):
        raise GrowthError(f"init={init!r}; valid: preserve, random")
    grown = dataclasses.replace(old, qkv_tokens=new_counts["qkv"], proj_tokens=new_counts["proj"],
                                ffn_tokens=new_counts["ffn"])
    scales = _scales(old) if init == "preserve" else {kind: None for kind in _SCALES}
    return dataclasses.replace(grown, **{_SCALES[kind]: value for kind, value in scales.items()})


def new_token_rows(model: Any, name: str, rows: int, width: int, init: str, seed: int) -> torch.Tensor:
    """The first values of `rows` new tokens of parameter `name` (keys or values) of the grown `model`."""
    keys = name.endswith("key_tokens")
    if keys and init == "preserve":
        return torch.zeros(rows, width)
    std = model.key_init_std if keys else model.value_std
    generator = torch.Generator().manual_seed(name_seed(seed, f"grow:{name}"))
    return torch.randn(rows, width, generator=generator) * std
