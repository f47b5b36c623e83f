"""Packed token samples of one split of a shard dataset, addressed by sample index."""

from __future__ import annotations

import io

import numpy as np

from gigatron.data.errors import DataError
from gigatron.data.manifest import SAMPLE_SUFFIX, TextDataset
from gigatron.data.shard_cache import ShardCache
from gigatron.data.sharded_tars import ShardedTars
from gigatron.data.tar_index import TarIndex


class TokenShardSource:
    """`source[i]` is sample i (int64 array of seq_len + 1 ids) of `split`, shards in manifest order.

    Local shards are checked against the manifest when the source is built (size always; sha256
    with verify="sha256", or "auto" for datasets under 1 GiB); a remote dataset's shards are checked
    as `cache` downloads them. Tar headers are indexed lazily, per process, on first access.
    """

    def __init__(self, dataset: TextDataset, split: str, verify: str = "auto", cache: ShardCache | None = None) -> None:
        if split not in dataset.splits or not dataset.splits[split]:
            raise DataError(f"{dataset.root}: the manifest has no '{split}' split with shards")
        self.dataset = dataset
        self.split = split
        self.shards = dataset.splits[split]
        self.sample_len = dataset.seq_len + 1
        self.dtype = np.dtype(dataset.dtype)
        self.tars = ShardedTars(self.shards, verify, cache)
        self._header: bytes | None = None

    def __len__(self) -> int:
        return len(self.tars)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} outside [0, {len(self)})")
        index, local = self.tars.find(i)
        raw = index.read(local, SAMPLE_SUFFIX)[SAMPLE_SUFFIX]
        return self._decode(raw, index, local)

    def _decode(self, raw: bytes, index: TarIndex, local: int) -> np.ndarray:
        expected_bytes = self.sample_len * self.dtype.itemsize
        header_len = len(raw) - expected_bytes
        # Fast path: every member of a shard has the same .npy header; compare it byte for byte.
        where = f"{index.label}:{index.keys[local]}.{SAMPLE_SUFFIX}"
        if header_len > 0 and self._header is not None and raw[:header_len] == self._header:
            return self._checked(np.frombuffer(raw, dtype=self.dtype, offset=header_len), where)
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{where}: not a valid .npy array ({exc})") from exc
        if array.shape != (self.sample_len,) or array.dtype != self.dtype:
            raise DataError(f"{where}: holds {array.dtype}{list(array.shape)}, the manifest says "
                            f"{self.dtype}[{self.sample_len}]")
        if header_len > 0:
            self._header = raw[:header_len]
        return self._checked(array, where)

    def _checked(self, array: np.ndarray, where: str) -> np.ndarray:
        # An id beyond the vocabulary would surface later as an opaque embedding index error.
        top = int(array.max())
        if top >= self.dataset.vocab_size:
            raise DataError(f"{where}: token id {top} >= the manifest's vocab_size {self.dataset.vocab_size}")
        return array.astype(np.int64)
