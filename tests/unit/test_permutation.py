"""The index-wise permutation and the global order built on it."""

from __future__ import annotations

import numpy as np
import pytest

from gigatron.data.global_order import GlobalOrder, block_counts
from gigatron.data.permutation import FeistelPermutation


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4099])
def test_feistel_is_a_bijection(n: int) -> None:
    out = FeistelPermutation(n, key=11)(np.arange(n))
    assert sorted(out.tolist()) == list(range(n))


def test_feistel_depends_on_key_and_is_deterministic() -> None:
    a = FeistelPermutation(1000, 1)(np.arange(1000))
    assert np.array_equal(a, FeistelPermutation(1000, 1)(np.arange(1000)))
    assert not np.array_equal(a, FeistelPermutation(1000, 2)(np.arange(1000)))
    assert not np.array_equal(a, np.arange(1000))
    with pytest.raises(IndexError):
        FeistelPermutation(10, 1)(np.array([10]))


def test_single_dataset_epochs_are_permutations_and_differ() -> None:
    order = GlobalOrder([50], None, seed=3)
    _, first = order(np.arange(50))
    _, second = order(np.arange(50, 100))
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(50))
    assert not np.array_equal(first, second)
    _, plain = GlobalOrder([50], None, seed=3, shuffle=False)(np.arange(120))
    assert plain.tolist() == [i % 50 for i in range(120)]


def test_blend_counts_are_exact_per_block_and_each_dataset_cycles_its_own_epochs() -> None:
    assert block_counts([0.5, 0.3, 0.2], 10).tolist() == [5, 3, 2]
    assert block_counts([1, 1, 1], 10).sum() == 10
    order = GlobalOrder([7, 40, 1000], [0.5, 0.3, 0.2], seed=5, block_size=100)
    datasets, samples = order(np.arange(1000))
    assert np.bincount(datasets).tolist() == [500, 300, 200]
    small = samples[datasets == 0]
    for epoch in range(500 // 7):  # the 7-sample set is upsampled: each run of 7 is one permutation
        assert sorted(small[7 * epoch: 7 * epoch + 7].tolist()) == list(range(7))
    with pytest.raises(ValueError, match="positive"):
        GlobalOrder([5, 5], [1.0, 0.0], seed=0)
