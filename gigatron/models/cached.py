"""Running a layer-list model incrementally with per-layer generation caches.

Layers that carry state across tokens (attention: KV cache; Mamba: conv + SSM state) expose
`new_cache(batch, max_len, device, dtype)` and `forward_cached(x, cache)`; the others are
stateless and run their plain `forward`.
"""

from __future__ import annotations

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
