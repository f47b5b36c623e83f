"""The global-order batch loader: DP-size independence, resume across DP sizes, epochs, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gigatron.data import GlobalBatchLoader, PackedSamples

SEQ_LEN = 4
GLOBAL = 8
MICRO = 2


def _source(n: int = 37) -> PackedSamples:
    # Token value = position, so each sample's first token identifies it: sample i starts at i*SEQ_LEN.
    return PackedSamples(np.arange(n * SEQ_LEN + 1, dtype=np.uint16), SEQ_LEN)


def _ids(micro_batches: list[torch.Tensor]) -> list[int]:
    return [int(row[0]) // SEQ_LEN for mb in micro_batches for row in mb]


def _global_step(loaders: list[GlobalBatchLoader]) -> list[int]:
    """One optimizer step over all ranks, concatenated in rank order."""
    return [i for loader in loaders for i in _ids(loader.next_batch())]


def _loaders(source: PackedSamples, dp: int, seed: int = 7, shuffle: bool = True) -> list[GlobalBatchLoader]:
    return [GlobalBatchLoader(source, GLOBAL, MICRO, r, dp, seed, shuffle) for r in range(dp)]


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_union_over_ranks_equals_dp1_global_batch(dp: int) -> None:
    source = _source()
    reference = _loaders(source, 1)[0]
    ranks = _loaders(source, dp)
    for _ in range(12):  # 96 samples: crosses two epoch boundaries of 37
        ref_batch = reference.next_batch()
        assert len(ref_batch) == GLOBAL // MICRO
        per_rank = [loader.next_batch() for loader in ranks]
        for mbs in per_rank:
            assert len(mbs) == GLOBAL // (MICRO * dp)
            assert all(mb.dtype == torch.int64 and mb.shape == (MICRO, SEQ_LEN + 1) for mb in mbs)
        assert torch.equal(torch.cat([mb for mbs in per_rank for mb in mbs]), torch.cat(ref_batch))
    assert all(loader.consumed_samples == 12 * GLOBAL for loader in ranks)


def test_micro_batches_hold_the_right_samples() -> None:
    source = _source()
    (loader,) = _loaders(source, 1, shuffle=False)
    batch = loader.next_batch()
    for j, mb in enumerate(batch):
        for k, row in enumerate(mb):
            np.testing.assert_array_equal(row.numpy(), source[j * MICRO + k])


@pytest.mark.parametrize(("dp_before", "dp_after"), [(2, 1), (2, 4), (1, 4), (4, 2)])
def test_resume_with_a_different_dp_size(dp_before: int, dp_after: int) -> None:
    source = _source()
    (uninterrupted,) = _loaders(source, 1)
    expected = [_ids(uninterrupted.next_batch()) for _ in range(11)][5:]

    before = _loaders(source, dp_before)
    for _ in range(5):
        _global_step(before)
    state = before[0].state_dict()
    assert state == {"consumed_samples": 5 * GLOBAL, "seed": 7, "num_samples": len(source)}
    assert all(loader.state_dict() == state for loader in before)

    after = _loaders(source, dp_after, seed=999)  # the checkpoint's seed wins
    for loader in after:
        loader.load_state_dict(state)
    assert [_global_step(after) for _ in range(6)] == expected


def test_epoch_boundary_crossing() -> None:
    n = 10
    source = _source(n)
    (loader,) = _loaders(source, 1, seed=3)
    stream = [i for _ in range(5) for i in _ids(loader.next_batch())]  # 40 samples = 4 epochs
    for epoch in range(4):
        expected = np.random.default_rng([3, epoch]).permutation(n).tolist()
        assert stream[epoch * n : (epoch + 1) * n] == expected
    # The second global batch spans epochs 0 and 1.
    assert sorted(stream[:n]) == list(range(n))

    (plain,) = _loaders(source, 1, shuffle=False)
    assert [i for _ in range(3) for i in _ids(plain.next_batch())] == [p % n for p in range(24)]


def test_state_mismatch_is_an_error() -> None:
    (loader,) = _loaders(_source(37), 1)
    state = loader.state_dict()
    (other,) = _loaders(_source(36), 1)
    with pytest.raises(ValueError, match=r"37.*36"):
        other.load_state_dict(state)


def test_constructor_validates_sizes() -> None:
    source = _source()
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchLoader(source, 10, 2, 0, 4, seed=0)  # 10 % (2 * 4) != 0
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchLoader(source, 8, 3, 0, 1, seed=0)
    with pytest.raises(ValueError, match="dp_rank"):
        GlobalBatchLoader(source, 8, 2, 2, 2, seed=0)
    with pytest.raises(ValueError, match="dp_size"):
        GlobalBatchLoader(source, 8, 2, 0, 0, seed=0)
    with pytest.raises(ValueError, match=">= 1"):
        GlobalBatchLoader(source, 8, 0, 0, 1, seed=0)
