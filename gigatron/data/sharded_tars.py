"""The samples of a split's tar shards, addressed by one running index.

Shared by the token and image sources: shards are checked against the manifest when opened (size
always; sha256 with verify="sha256", or "auto" for splits under 1 GiB), and each tar's headers are
indexed lazily, per process, on first access.
"""

from __future__ import annotations

import bisect

import numpy as np

from gigatron.data.errors import DataError
from gigatron.data.manifest import ShardInfo, verify_shard
from gigatron.data.tar_index import TarIndex

# Splits up to this size get a sha256 check of every shard at start under verify="auto".
AUTO_SHA256_BYTES = 1 << 30


class ShardedTars:
    """Sample i of the shards in order -> (the tar's index, the sample's position in that tar)."""

    def __init__(self, shards: list[ShardInfo], verify: str = "auto") -> None:
        if verify not in ("auto", "size", "sha256"):
            raise ValueError(f"data.verify={verify!r}; valid: auto, size, sha256")
        checksum = verify == "sha256" or (verify == "auto" and sum(s.bytes for s in shards) <= AUTO_SHA256_BYTES)
        for shard in shards:
            problem = verify_shard(shard, checksum=checksum)
            if problem:
                raise DataError(problem)
        self.shards = shards
        self._starts = np.cumsum([0] + [s.samples for s in shards]).tolist()
        self._indexes: dict[int, TarIndex] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def _index(self, shard_id: int) -> TarIndex:
        index = self._indexes.get(shard_id)
        if index is None:
            shard = self.shards[shard_id]
            index = TarIndex(shard.path)
            if len(index) != shard.samples:
                raise DataError(f"{shard.path}: has {len(index)} samples, the manifest says {shard.samples}")
            self._indexes[shard_id] = index
        return index

    def find(self, i: int) -> tuple[TarIndex, int]:
        """(index of the tar holding sample i, i's position in it)."""
        shard_id = bisect.bisect_right(self._starts, i) - 1
        return self._index(shard_id), i - self._starts[shard_id]
