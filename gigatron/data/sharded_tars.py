"""The samples of a split's tar shards, addressed by one running index.

Shared by the token and image sources. Local shards are checked against the manifest when opened
(size always; sha256 with verify="sha256", or "auto" for splits under 1 GiB). A remote dataset's
shards come from a `ShardCache`, which checks each as it downloads it; a process holds a bounded
number of them in the cache at once (`max_held`), so the rest can be evicted. Each tar's headers are
indexed lazily, per process, on first access.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict

import numpy as np

from gigatron.data.errors import DataError
from gigatron.data.manifest import ShardInfo, verify_shard
from gigatron.data.shard_cache import ShardCache
from gigatron.data.tar_index import TarIndex

# Splits up to this size get a sha256 check of every shard at start under verify="auto".
AUTO_SHA256_BYTES = 1 << 30
# Remote shards one process holds in the cache at a time (the most recently read). Taking a shard
# again costs a lock file's open, flock and a stat (~0.1 ms), and a shuffled order reads a new shard
# nearly every sample, so hold many; but a held shard cannot be evicted, so with data.cache_limit
# hold at most an eighth of what the cache holds (never fewer than 2).
MAX_HELD_REMOTE = 64
MIN_HELD_REMOTE = 2


class ShardedTars:
    """Sample i of the shards in order -> (the tar's index, the sample's position in that tar)."""

    def __init__(self, shards: list[ShardInfo], verify: str = "auto", cache: ShardCache | None = None) -> None:
        if verify not in ("auto", "size", "sha256"):
            raise ValueError(f"data.verify={verify!r}; valid: auto, size, sha256")
        checksum = verify == "sha256" or (verify == "auto" and sum(s.bytes for s in shards) <= AUTO_SHA256_BYTES)
        if cache is None:
            for shard in shards:
                problem = verify_shard(shard, checksum=checksum)
                if problem:
                    raise DataError(problem)
        self.shards = shards
        self.cache = cache
        self.max_held = MAX_HELD_REMOTE
        if cache is not None and cache.limit is not None and shards:
            self.max_held = max(MIN_HELD_REMOTE, min(MAX_HELD_REMOTE, cache.limit // (8 * max(s.bytes for s in shards))))
        self._starts = np.cumsum([0] + [s.samples for s in shards]).tolist()
        self.starts = np.asarray(self._starts, dtype=np.int64)  # first sample of each shard (and the end)
        self._indexes: dict[int, TarIndex] = {}
        self._held: OrderedDict[int, None] = OrderedDict()
        self._held_pid = os.getpid()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_held"] = OrderedDict()  # a copy holds nothing in the cache; it acquires shards itself
        return state

    def shard_of(self, i: int) -> int:
        """Which shard holds sample i."""
        return bisect.bisect_right(self._starts, i) - 1

    def _index(self, shard_id: int) -> TarIndex:
        index = self._indexes.get(shard_id)
        if self.cache is not None:
            self._hold(shard_id)
        if index is None:
            shard = self.shards[shard_id]
            label = None if self.cache is None else self.cache.store.locate(shard.path.name)
            path = shard.path if self.cache is None else self.cache.local_path(shard)
            index = TarIndex(path, label=label)
            if len(index) != shard.samples:
                raise DataError(f"{index.label}: has {len(index)} samples, the manifest says {shard.samples}")
            self._indexes[shard_id] = index
        return index

    def close(self) -> None:
        """Release every remote shard this process holds and close the tars' descriptors."""
        for index in self._indexes.values():
            index.close()
        if self.cache is not None:
            while self._held:
                shard_id, _ = self._held.popitem(last=False)
                self.cache.release(self.shards[shard_id])

    def _hold(self, shard_id: int) -> None:
        """Keep a remote shard's local copy from eviction while it is read (the last few, LRU).

        Header indexes outlive the hold: a copy evicted and fetched again is verified to be the
        same bytes, so its index still holds.
        """
        assert self.cache is not None
        if self._held_pid != os.getpid():  # a forked worker inherits the list, not the holds
            self._held, self._held_pid = OrderedDict(), os.getpid()
        if shard_id in self._held:
            self._held.move_to_end(shard_id)
            return
        self.cache.acquire(self.shards[shard_id])
        self._held[shard_id] = None
        index = self._indexes.get(shard_id)
        if index is not None:
            index.close()  # the file may be a new copy: read through a new descriptor
        if len(self._held) > self.max_held:
            oldest, _ = self._held.popitem(last=False)
            if oldest in self._indexes:
                self._indexes[oldest].close()
            self.cache.release(self.shards[oldest])

    def find(self, i: int) -> tuple[TarIndex, int]:
        """(index of the tar holding sample i, i's position in it)."""
        shard_id = self.shard_of(i)
        return self._index(shard_id), i - self._starts[shard_id]
