"""The global sample order: which (dataset, sample) is the g-th sample a run consumes.

Everything is a pure function of (dataset sizes, weights, seed, g), so every rank, worker and
node computes the same order independently, a resumed run needs only the counter g, and a
different DP size reads the same stream sliced differently.

- One dataset: epoch e = g // n; within it, sample Feistel_{seed,e}(g % n) (or g % n unshuffled).
- Several datasets with weights: blocks of `block_size` consecutive samples each hold the same
  number c_d = round(w_d * block_size) (largest remainder) of samples from dataset d, in an order
  shuffled per block; the k-th sample drawn from dataset d is that dataset's own g = k order
  above (each dataset cycles through its epochs on its own, so small sets are upsampled).
  Proportions are exact per block, so they hold to 1/block_size over any run longer than a block.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from gigatron.data.permutation import FeistelPermutation, derive_key


def block_counts(weights: list[float], block_size: int) -> np.ndarray:
    """Samples per dataset in one block: largest-remainder rounding of weights * block_size."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or (w <= 0).any() or not np.isfinite(w).all():
        raise ValueError(f"dataset weights must be positive and finite, got {list(weights)}")
    exact = w / w.sum() * block_size
    counts = np.floor(exact).astype(np.int64)
    short = block_size - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    if (counts == 0).any():
        raise ValueError(f"weights {list(weights)} give some dataset no sample per block of {block_size}; "
                         "raise its weight or the block size")
    return counts


class DatasetOrder:
    """The order inside one dataset: g -> sample index, epoch after epoch."""

    def __init__(self, size: int, seed: int, dataset_id: int, shuffle: bool) -> None:
        if size < 1:
            raise ValueError(f"dataset {dataset_id} has no samples")
        self.size, self.seed, self.dataset_id, self.shuffle = size, seed, dataset_id, shuffle
        self._perms: OrderedDict[int, FeistelPermutation] = OrderedDict()

    def _perm(self, epoch: int) -> FeistelPermutation:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = FeistelPermutation(self.size, derive_key(self.seed, self.dataset_id, epoch))
            self._perms[epoch] = perm
            if len(self._perms) > 4:
                self._perms.popitem(last=False)
        return perm

    def __call__(self, g: np.ndarray) -> np.ndarray:
        g = np.asarray(g, dtype=np.int64)
        within = g % self.size
        if not self.shuffle:
            return within
        epochs = g // self.size
        out = np.empty_like(g)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._perm(int(epoch))(within[sel])
        return out


class GlobalOrder:
    """Maps global sample numbers to (dataset ids, sample indices), for one or several datasets."""

    def __init__(self, sizes: list[int], weights: list[float] | None, seed: int, shuffle: bool = True,
                 block_size: int = 4096) -> None:
        self.sizes = list(sizes)
        self.weights = list(weights) if weights is not None else [1.0] * len(sizes)
        if len(self.weights) != len(self.sizes):
            raise ValueError(f"{len(self.sizes)} datasets but {len(self.weights)} weights")
        self.seed, self.shuffle, self.block_size = seed, shuffle, block_size
        self._orders = [DatasetOrder(n, seed, d, shuffle) for d, n in enumerate(self.sizes)]
        self._counts = block_counts(self.weights, block_size) if len(sizes) > 1 else None
        self._blocks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset of each position, rank of the position among its dataset's positions) in block b."""
        cached = self._blocks.get(b)
        if cached is None:
            assert self._counts is not None
            ids = np.repeat(np.arange(len(self._counts)), self._counts)
            if self.shuffle:
                ids = np.random.default_rng([self.seed, 0xB1E4D, b]).permutation(ids)
            rank = np.empty_like(ids)
            for d in range(len(self._counts)):
                where = np.flatnonzero(ids == d)
                rank[where] = np.arange(len(where))
            cached = (ids, rank)
            self._blocks[b] = cached
            if len(self._blocks) > 8:
                self._blocks.popitem(last=False)
        return cached

    def __call__(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dataset ids and sample indices of the global samples `g` (int arrays of g's shape)."""
        g = np.asarray(g, dtype=np.int64)
        if g.size and g.min() < 0:
            raise IndexError("global sample numbers must be >= 0")
        if self._counts is None:
            return np.zeros_like(g), self._orders[0](g)
        datasets = np.empty_like(g)
        local = np.empty_like(g)
        blocks, positions = g // self.block_size, g % self.block_size
        for b in np.unique(blocks):
            sel = blocks == b
            ids, rank = self._block(int(b))
            datasets[sel] = ids[positions[sel]]
            local[sel] = int(b) * self._counts[ids[positions[sel]]] + rank[positions[sel]]
        samples = np.empty_like(g)
        for d, order in enumerate(self._orders):
            sel = datasets == d
            if sel.any():
                samples[sel] = order(local[sel])
        return datasets, samples
