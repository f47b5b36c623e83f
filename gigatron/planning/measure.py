"""Peak memory measured as the bytes of live tensors, on any device (the CPU has no allocator statistics).

`LiveTensorBytes` is a dispatch mode: every tensor an operation creates while it is active is
counted until its storage is freed, and the running total's maximum is the peak. Unlike process
RSS it sees neither allocator slack nor the interpreter, so it is what a memory plan predicts and
what `torch.cuda.max_memory_allocated` reports on a GPU. Tensors that exist before the mode starts
are not counted: start it before building the model.
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
        self._live: dict[StorageWeakRef, int] = {}
        self.current = 0
        self.peak = 0

    def _collect(self) -> None:
        dead = [key for key in self._live if key.expired()]
        for key in dead:
            self.current -= self._live.pop(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        added = False
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                storage = value.untyped_storage()
                key = StorageWeakRef(storage)
                if key not in self._live:
                    self._live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    added = True
        if added:
            self._collect()
            self.peak = max(self.peak, self.current)
        return out
