"""Running a layer-list model incrementally with per-layer generation caches.

Layers that carry state across tokens (attention: KV cache; Mamba: conv + SSM state) expose
`new_cache(batch, max_len, device, dtype)` and `forward_cached(x, cache)`; the others are
stateless and run their plain `forward`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def new_caches(model: nn.Sequential, batch: int, max_len: int, device: torch.device | str,
               dtype: torch.dtype) -> list[Any]:
    """One cache per layer (None for stateless layers)."""
    return [layer.new_cache(batch, max_len, device, dtype) if hasattr(layer, "new_cache") else None
            for layer in model]


@torch.no_grad()
def forward_cached(model: nn.Sequential, ids: torch.Tensor, caches: list[Any]) -> torch.Tensor:
    """Logits for `ids` [batch, new] continuing after the tokens already in `caches` (updated in place)."""
    x = ids
    for layer, cache in zip(model, caches, strict=True):
        x = layer.forward_cached(x, cache) if cache is not None else layer(x)
    return x


def _is_kv(cache: Any) -> bool:
    return cache is None or (hasattr(cache, "length") and hasattr(cache, "k"))


def snapshot_caches(caches: list[Any]) -> list[Any]:
    """What `keep_fed_prefix` needs to undo later feeding: KV lengths, copies of recurrent states."""
    return [None if c is None else c.length if _is_kv(c) else copy.deepcopy(c) for c in caches]


@torch.no_grad()
def keep_fed_prefix(model: nn.Sequential, caches: list[Any], snapshot: list[Any], fed: torch.Tensor,
                    keep: int) -> None:
    """After feeding `fed` [batch, n] since `snapshot`, make `caches` hold only its first `keep` tokens.

    KV caches just forget the rest; a recurrent state (Mamba) cannot, so it is restored and the kept
    tokens are fed again (speculative decoding's rollback).
    """
    if keep == fed.shape[1]:
        return
    if all(_is_kv(c) for c in caches):
        for cache, length in zip(caches, snapshot, strict=True):
            if cache is not None:
                cache.length = length + keep
        return
    for i, (cache, saved) in enumerate(zip(caches, snapshot, strict=True)):
        if cache is None:
            continue
        if _is_kv(cache):
            cache.length = saved
        else:
            caches[i] = copy.deepcopy(saved)
    if keep:
        forward_cached(model, fed[:, :keep], caches)
