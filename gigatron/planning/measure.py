"""Peak memory measured as the bytes of live tensors, on any device (the CPU has no allocator statistics).

`LiveTensorBytes` is a dispatch mode: every tensor an operation creates while it is active is
counted until its storage is freed, and the running total's maximum is the peak. Unlike process
RSS it sees neither allocator slack nor the interpreter, so it is what a memory plan predicts and
what `torch.cuda.max_memory_allocated` reports on a GPU. Tensors that exist before the mode starts
are not counted (nor their views): start it before building the model to count the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages created under it; `peak` is the largest total seen."""

    def __init__(self) -> None:
        super().__init__()
        # key -> (the key object first stored, bytes). Keys compare by storage address, which the
        # allocator hands out again once a storage is freed: a key found may belong to a dead storage.
        self._live: dict[StorageWeakRef, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _collect(self) -> None:
        dead = [key for key, (stored, _) in self._live.items() if stored.expired()]
        for key in dead:
            self.current -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # An output on an input's storage is a view (a weight's transpose inside every linear): not a
        # new allocation, even when the input was made before the mode started.
        inputs = {StorageWeakRef(value.untyped_storage()) for value in tree_flatten((args, kwargs))[0]
                  if isinstance(value, torch.Tensor)}
        added = False
        for value in tree_flatten(out)[0]:
            if not isinstance(value, torch.Tensor) or value.device.type == "meta":
                continue
            storage = value.untyped_storage()
            key = StorageWeakRef(storage)
            if key in inputs:
                continue
            known = self._live.get(key)
            if known is not None and known[0].expired():  # a new storage where a freed one was
                self.current -= self._live.pop(key)[1]
                known = None
            if known is None:
                self._live[key] = (key, storage.nbytes())
                self.current += storage.nbytes()
                added = True
        if added:
            self._collect()
            self.peak = max(self.peak, self.current)
        return out
