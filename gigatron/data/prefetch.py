"""Fetch remote shards ahead of the loader, in the order this rank will read them.

The loader's future is known exactly: the global order maps every sample number to (dataset,
sample), and the rank's slice of each global batch is fixed. A thread walks those numbers ahead
of what the loader has consumed and puts each shard they touch into the node's cache, keeping at
most `depth` shards fetched ahead. Fetching changes no state the run depends on; a shard the thread
has not reached yet is downloaded by the reader itself.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from gigatron.data.errors import DataError
from gigatron.data.global_order import GlobalOrder
from gigatron.data.shard_cache import ShardCache


def remote_tars(source: Any) -> Any | None:
    """The `ShardedTars` of a source that reads a remote dataset, else None."""
    tars = getattr(source, "tars", None)
    return tars if getattr(tars, "cache", None) is not None else None


def shard_caches(sources: Sequence[Any]) -> list[ShardCache]:
    """The distinct shard caches behind `sources` (empty when every source is local)."""
    caches: dict[int, ShardCache] = {}
    for source in sources:
        tars = remote_tars(source)
        if tars is not None:
            caches[id(tars.cache)] = tars.cache
    return list(caches.values())


class ShardPrefetcher:
    """A daemon thread fetching the shards of `numbers` (micro-batches of global sample numbers)."""

    def __init__(self, sources: Sequence[Any], order: GlobalOrder, numbers: Iterable[list[int]],
                 consumed: Callable[[], int], depth: int) -> None:
        self.sources, self.order, self.numbers, self.consumed, self.depth = sources, order, numbers, consumed, depth
        self.error: DataError | None = None
        self._advanced = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="gigatron-shard-prefetch", daemon=True)

    def start(self) -> ShardPrefetcher:
        """Start fetching (after any DataLoader workers are forked)."""
        self._thread.start()
        return self

    def advanced(self) -> None:
        """The loader consumed more samples: there may be room to fetch further ahead."""
        with self._advanced:
            self._advanced.notify_all()

    def stop(self) -> None:
        """Stop at the next shard boundary."""
        with self._advanced:
            self._stop = True
            self._advanced.notify_all()

    def _run(self) -> None:
        ahead: deque[tuple[int, tuple[int, int]]] = deque()  # (first sample number needing it, shard)
        remote = [remote_tars(source) for source in self.sources]
        # Without a size limit nothing is ever evicted: once every shard is in, the work is done.
        everything = sum(len(t.shards) for t in remote if t is not None) if all(
            t.cache.limit is None for t in remote if t is not None) else None
        fetched: set[tuple[int, int]] = set()
        try:
            for batch in self.numbers:
                if everything is not None and len(fetched) == everything:
                    return
                for number, key in self._shards_of(batch):
                    if any(k == key for _, k in ahead):
                        continue
                    if not self._wait_for_room(ahead):
                        return
                    tars = remote_tars(self.sources[key[0]])
                    tars.cache.fetch(tars.shards[key[1]])
                    ahead.append((number, key))
                    fetched.add(key)
        except DataError as exc:
            # The reader meets the same shard and raises the same error, at the sample that needs it.
            self.error = exc

    def _shards_of(self, batch: list[int]) -> list[tuple[int, tuple[int, int]]]:
        """(first sample number, (dataset, shard)) of each remote shard `batch` reads, in read order."""
        numbers = np.asarray(batch, dtype=np.int64)
        datasets, samples = self.order(numbers)
        found: dict[tuple[int, int], int] = {}
        for d in np.unique(datasets).tolist():
            tars = remote_tars(self.sources[d])
            if tars is None:
                continue
            where = datasets == d
            shards = np.searchsorted(tars.starts, samples[where], side="right") - 1
            for number, shard in zip(numbers[where].tolist(), shards.tolist(), strict=True):
                found.setdefault((d, shard), number)
        return sorted(((n, k) for k, n in found.items()), key=lambda item: item[0])

    def _wait_for_room(self, ahead: deque) -> bool:
        with self._advanced:
            while True:
                if self._stop:
                    return False
                consumed = self.consumed()
                while ahead and ahead[0][0] < consumed:
                    ahead.popleft()
                if len(ahead) < self.depth:
                    return True
                self._advanced.wait(timeout=1.0)
