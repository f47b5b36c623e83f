"""Activation memory counted, not estimated: the bytes autograd keeps for backward during a forward.

Run under `FakeTensorMode` (a model built there holds no memory), the count costs nothing and
follows the code that will run: every family, every layout-dependent shape, recomputed regions
(which save only their inputs). docs/benchmarks.md ("Activation bytes from shapes") compares it with
what one H200 measured (`benchmarks/activation_count.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from gigatron.models.layers.recompute import observe_region_inputs


def saved_for_backward(forward: Callable[[], object], exclude: Iterable[torch.Tensor] = (),
                       label: Callable[[], Hashable] = lambda: None) -> dict[Hashable, int]:
    """Bytes of the distinct storages autograd saves for backward while `forward()` runs, by the
    `label()` current when each storage was first saved (e.g. the module saving it).

    A storage counts once however many ops save it or views of it; storages of `exclude` (pass the
    parameters: they are weights, not activations) are not counted. A recomputed region
    (`models/layers/recompute.py`) counts the inputs it keeps instead of what its operations save.
    Works on real tensors and under FakeTensorMode.
    """
    excluded = {StorageWeakRef(t.untyped_storage()) for t in exclude}
    kept: dict[StorageWeakRef, tuple[Hashable, torch.UntypedStorage]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = StorageWeakRef(storage)
        if key not in excluded and key not in kept:
            kept[key] = (label(), storage)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), observe_region_inputs(pack):
        forward()
    # Sized at the end of the forward: recomputed norms release their outputs' storage by then.
    totals: dict[Hashable, int] = {}
    for name, storage in kept.values():
        totals[name] = totals.get(name, 0) + storage.nbytes()
    return totals


def saved_for_backward_bytes(forward: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """All the bytes `saved_for_backward` counts."""
    return sum(saved_for_backward(forward, exclude).values())
