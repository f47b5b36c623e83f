"""Writing a safetensors file one tensor at a time.

`safetensors.torch.save_file` needs every tensor in memory at once; a consolidated checkpoint of a
large model does not fit. The format is a little-endian u64 header length, a JSON header giving each
tensor's dtype, shape and byte range, then the raw bytes; knowing the shapes in advance, the header
is written first and each tensor streamed after it. The file appears under its name only once
complete (written as a temporary file, then renamed).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
           torch.int32: "I32", torch.uint8: "U8"}


class StreamingSafetensorsWriter:
    """Header from (name, shape, dtype) specs; then `write(name, tensor)` in the same order; then `close()`."""

    def __init__(self, path: str | Path, specs: list[tuple[str, tuple[int, ...], torch.dtype]],
                 metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp.{os.getpid()}")
        self._specs = list(specs)
        header: dict[str, object] = {}
        offset = 0
        for name, shape, dtype in self._specs:
            nbytes = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        if metadata:
            header["__metadata__"] = dict(metadata)
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the spec aligns the data start to 8 bytes
        self._handle = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._handle.write(struct.pack("<Q", len(encoded)))
        self._handle.write(encoded)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; its name, shape and dtype must be the next spec's."""
        expected, shape, dtype = self._specs[self._next]
        if name != expected or tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            self.abort()
            raise ValueError(f"{self.path}: expected {expected} {tuple(shape)} {dtype}, got {name} "
                             f"{tuple(tensor.shape)} {tensor.dtype}")
        data = tensor.detach().cpu().contiguous()
        # Through numpy's buffer, the bytes are written without another copy of the tensor.
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        self._handle.write(data.numpy().reshape(-1).view("u1"))
        self._next += 1

    def close(self) -> Path:
        """Check that every tensor was written, flush to disk and move the file into place."""
        if self._next != len(self._specs):
            self.abort()
            raise ValueError(f"{self.path}: only {self._next} of {len(self._specs)} tensors were written")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        if not self._handle.closed:
            self._handle.close()
        self._tmp.unlink(missing_ok=True)
