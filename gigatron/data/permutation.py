"""Pseudo-random permutations of [0, n) computed index by index, never materialised.

The loader's global order must be the same on every node without any node building an index
that others need, and must scale to billions of samples: a permutation array of 10^9 samples
is 8 GB per process. A keyed Feistel network over the next power of four above n is a bijection
on that domain; cycle-walking (re-applying it while the result is >= n) restricts it to a
bijection on [0, n). Each lookup is a handful of integer operations, vectorised with numpy.
"""

from __future__ import annotations

import numpy as np

_ROUNDS = 6
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser: a fast, well-mixed 64-bit hash of each element (uint64 in, uint64 out)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def derive_key(*parts: int) -> int:
    """A 64-bit key from integers (seed, epoch, dataset id …), order-sensitive."""
    key = np.uint64(0x5EED)
    for part in parts:
        key = splitmix64(np.array([key ^ np.uint64(part & 0xFFFFFFFFFFFFFFFF)], dtype=np.uint64))[0]
    return int(key)


class FeistelPermutation:
    """A bijection on [0, n) keyed by `key`; `perm(indices)` maps an int array elementwise."""

    def __init__(self, n: int, key: int) -> None:
        if n < 1:
            raise ValueError(f"cannot permute an empty range (n={n})")
        self.n = n
        bits = max(2, int(n - 1).bit_length())
        bits += bits % 2  # balanced halves
        self._half = np.uint64(bits // 2)
        self._mask = np.uint64((1 << (bits // 2)) - 1)
        self._keys = [np.uint64(derive_key(key, r)) for r in range(_ROUNDS)]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        for round_key in self._keys:
            left, right = right, left ^ (splitmix64(right ^ round_key) & self._mask)
        return (left << self._half) | right

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"indices must be in [0, {self.n})")
        out = self._encrypt(idx.astype(np.uint64))
        outside = out >= np.uint64(self.n)
        while outside.any():  # cycle-walk back into [0, n); terminates because _encrypt is a bijection
            out[outside] = self._encrypt(out[outside])
            outside = out >= np.uint64(self.n)
        return out.astype(np.int64)
