"""Peak memory measured as the bytes of live tensors, on any device (the CPU has no allocator statistics).

`LiveTensorBytes` is a dispatch mode: every tensor an operation creates while it is active is
counted until its storage is freed, and the running total's maximum is the peak. Unlike process
RSS it sees neither allocator slack nor the interpreter, so it is what a memory plan predicts and
what `torch.cuda.max_memory_allocated` reports on a GPU. Tensors that exist before the mode starts
are not counted (nor their views): start it before building the model to count the weights.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages created under it; `peak` is the largest total seen.

    A storage's Python object lives exactly as long as the storage (PyTorch preserves it while C++
    holds the storage, e.g. as a tensor saved for backward), so a finalizer on it subtracts the
    bytes at the moment the storage is freed: the count is exact after every operation, at a
    constant cost per operation (a scan of the live storages made deep models quadratic).
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}  # id of a counted storage's Python object -> its bytes
        self.current = 0
        self.peak = 0

    def _freed(self, key: int) -> None:
        self.current -= self._live.pop(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # An output on an input's storage is a view (a weight's transpose inside every linear): not a
        # new allocation, even when the input was made before the mode started.
        inputs = {id(value.untyped_storage()) for value in _tensors((args, kwargs))}
        for value in _tensors(out):
            if value.device.type == "meta":
                continue
            storage = value.untyped_storage()
            key = id(storage)
            if key in inputs or key in self._live:
                continue
            self._live[key] = storage.nbytes()
            self.current += storage.nbytes()
            weakref.finalize(storage, self._freed, key)
        self.peak = max(self.peak, self.current)
        return out


def _tensors(tree: Any) -> list[torch.Tensor]:
    """The tensors in an operation's arguments or outputs (nested tuples, lists and dicts): what
    torch's tree_flatten finds there, at a fraction of its cost (it is per operation of a trace)."""
    found: list[torch.Tensor] = []
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found
