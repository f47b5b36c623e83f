"""Random access to the members of an uncompressed (WebDataset) tar by sample key.

Tar members are stored contiguously and uncompressed, so once the header offsets are known a
sample is one positioned read. The index is built by each process from the tar headers when it
first touches a shard (milliseconds), so nothing computed on one node is needed on another.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from gigatron.data.errors import DataError


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset convention: 'dir/000012.tokens.npy' -> key 'dir/000012', extension 'tokens.npy'."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        raise ValueError(name)
    return (f"{directory}/{stem}" if directory else stem), ext


class TarIndex:
    """Keys of a tar in file order, and for each key its members' (offset, size)."""

    def __init__(self, path: str | Path, label: str | None = None) -> None:
        self.path = Path(path)
        # What messages call the shard: its URL when `path` is a cached copy.
        self.label = label or str(self.path)
        self.keys: list[str] = []
        self.members: dict[str, dict[str, tuple[int, int]]] = {}
        file_size = self.path.stat().st_size
        try:
            with tarfile.open(self.path, mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    if info.offset_data + info.size > file_size:
                        raise DataError(f"{self.label}: member {info.name!r} is cut off at byte {file_size} "
                                        "(truncated shard)")
                    try:
                        key, ext = split_member_name(info.name)
                    except ValueError:
                        raise DataError(f"{self.label}: member {info.name!r} is not named <key>.<ext>") from None
                    if key not in self.members:
                        self.members[key] = {}
                        self.keys.append(key)
                    self.members[key][ext] = (info.offset_data, info.size)
        except tarfile.TarError as exc:
            raise DataError(f"{self.label}: not a readable tar ({exc}); the shard is corrupt or truncated") from exc
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def _descriptor(self) -> int:
        # One descriptor per process: DataLoader workers are forked and must not share file offsets
        # (pread has none, but a forked descriptor would still outlive a closed parent).
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def read(self, index: int, ext: str | None = None) -> dict[str, bytes]:
        """The members of the index-th sample (or only `ext`), as extension -> bytes."""
        key = self.keys[index]
        members = self.members[key]
        if ext is not None:
            if ext not in members:
                raise DataError(f"{self.label}: sample {key!r} has no '.{ext}' member (has {sorted(members)})")
            members = {ext: members[ext]}
        fd = self._descriptor()
        out = {}
        for name, (offset, size) in members.items():
            data = os.pread(fd, size, offset)
            if len(data) != size:
                raise DataError(f"{self.label}: member {key}.{name} is cut off (truncated shard)")
            out[name] = data
        return out

    def close(self) -> None:
        """Close this process's descriptor (the next read opens it again)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = self._pid = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None
        return state
