"""The shard loader: exact resume, elastic DP, blending, workers, and bad shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gigatron.config.schema import DataConfig, DatasetSpec
from gigatron.data.build import build_lm_data
from gigatron.data.errors import DataError
from gigatron.data.loader import GlobalBatchLoader
from gigatron.data.manifest import file_sha256, load_text_dataset
from gigatron.data.token_source import TokenShardSource
from tests.unit.shard_fixtures import ids, write_dataset

N = 96
GLOBAL = 16


def source(root, verify="sha256"):
    return TokenShardSource(load_text_dataset(root), "train", verify)


def loaders(src, dp, **kw):
    return [GlobalBatchLoader(src, GLOBAL, 2, r, dp, seed=9, **kw) for r in range(dp)]


def global_step(ranks) -> list[int]:
    return [i for loader in ranks for mb in loader.next_batch() for i in ids(mb)]


@pytest.fixture
def train_source(tmp_path):
    return source(write_dataset(tmp_path / "ds", N))


def test_samples_read_back_and_epoch_covers_every_sample_once(train_source):
    assert len(train_source) == N
    assert train_source[37].tolist() == [37] * 9
    (single,) = loaders(train_source, 1)
    seen = [i for _ in range(N // GLOBAL) for i in global_step([single])]
    assert sorted(seen) == list(range(N)) and seen != list(range(N))


def test_resume_reproduces_the_uninterrupted_sample_ids(train_source):
    reference = loaders(train_source, 2)
    expected = [global_step(reference) for _ in range(10)]
    first = loaders(train_source, 2)
    got = [global_step(first) for _ in range(4)]
    state = first[0].state_dict()
    resumed = loaders(train_source, 2)
    for loader in resumed:
        loader.load_state_dict(state)
    got += [global_step(resumed) for _ in range(6)]
    assert got == expected


@pytest.mark.parametrize(("before", "after"), [(2, 4), (4, 2), (1, 4)])
def test_elastic_resume_continues_the_same_global_order(train_source, before, after):
    # Three epochs' worth of steps; switch DP size half-way through the second epoch.
    steps = 3 * N // GLOBAL
    reference = loaders(train_source, 1)
    expected = [global_step(reference) for _ in range(steps)]
    old = loaders(train_source, before)
    got = [global_step(old) for _ in range(9)]
    new = loaders(train_source, after)
    for loader in new:
        loader.load_state_dict(old[0].state_dict())
    got += [global_step(new) for _ in range(steps - 9)]
    assert got == expected
    flat = [i for step in got for i in step]
    for epoch in range(3):  # no repeats, no gaps, epoch by epoch
        assert sorted(flat[epoch * N:(epoch + 1) * N]) == list(range(N))


def test_workers_deliver_the_same_batches(train_source):
    plain, = loaders(train_source, 1)
    workers, = loaders(train_source, 1, num_workers=2)
    for _ in range(8):
        assert [ids(mb) for mb in plain.next_batch()] == [ids(mb) for mb in workers.next_batch()]
    workers.close()


def test_blend_weights_are_honoured(tmp_path):
    roots = [write_dataset(tmp_path / f"d{k}", n, offset=k * 10_000) for k, n in enumerate((20, 60, 200))]
    sources = [source(r) for r in roots]
    loader = GlobalBatchLoader(sources, 64, 8, 0, 1, seed=1, weights=[0.2, 0.5, 0.3])
    seen = [i for _ in range(256) for mb in loader.next_batch() for i in ids(mb)]  # 4 blocks of 4096
    counts = np.bincount([i // 10_000 for i in seen], minlength=3) / len(seen)
    assert counts == pytest.approx([0.2, 0.5, 0.3], abs=1 / 4096)
    with pytest.raises(ValueError, match="blend weights"):
        GlobalBatchLoader(sources, 64, 8, 0, 1, seed=1, weights=[0.3, 0.4, 0.3]).load_state_dict(loader.state_dict())


def test_state_from_other_data_is_refused(tmp_path, train_source):
    other = source(write_dataset(tmp_path / "other", N + 1))
    (a,) = loaders(train_source, 1)
    (b,) = loaders(other, 1)
    with pytest.raises(ValueError, match="96"):
        b.load_state_dict(a.state_dict())


def test_truncated_shard_is_named(tmp_path):
    root = write_dataset(tmp_path / "ds", 30)
    shard = root / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-700])
    with pytest.raises(DataError, match="train-000001.tar has .* bytes, the manifest says"):
        source(root, verify="size")


def test_checksum_mismatch_is_named(tmp_path):
    root = write_dataset(tmp_path / "ds", 30)
    shard = root / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    data[1100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-000002.tar fails its sha256"):
        source(root, verify="sha256")
    assert len(source(root, verify="size")) == 30  # size-only check lets it through, by request


def _corrupt_member(root, shard_name: str, sample: int) -> None:
    """Overwrite one member's .npy header with garbage and re-record the shard's checksum."""
    shard = root / shard_name
    data = bytearray(shard.read_bytes())
    key = f"{sample:010d}.tokens.npy".encode()
    at = data.index(key) + 512  # the member's data follows its 512-byte header
    data[at:at + 6] = b"GARBAG"
    shard.write_bytes(bytes(data))
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["splits"]["train"]["shards"]:
        if entry["file"] == shard_name:
            entry["sha256"] = file_sha256(shard)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_corrupt_member_raises_naming_shard_and_member(tmp_path):
    root = write_dataset(tmp_path / "ds", 30)
    _corrupt_member(root, "train-000001.tar", 13)
    src = source(root)
    with pytest.raises(DataError, match=r"train-000001.tar:0000000013.tokens.npy: not a valid .npy"):
        src[13]
    assert src[12].tolist() == [12] * 9


def test_skip_masks_the_sample_and_keeps_every_other_position(tmp_path):
    clean = source(write_dataset(tmp_path / "clean", 30))
    root = write_dataset(tmp_path / "bad", 30)
    _corrupt_member(root, "train-000001.tar", 13)
    (reference,) = [GlobalBatchLoader(clean, 10, 5, 0, 1, seed=2)]
    (skipping,) = [GlobalBatchLoader(source(root), 10, 5, 0, 1, seed=2, on_error="skip")]
    for _ in range(6):
        for ref_mb, mb in zip(reference.next_batch(), skipping.next_batch(), strict=True):
            for r, s in zip(ids(ref_mb), ids(mb), strict=True):
                assert s == (-1 if r == 13 else r)
    assert skipping.skipped_samples == 2  # sample 13 came up once in each of the two epochs


def test_build_checks_seq_len_and_tokenizer_consistency(tmp_path):
    a = write_dataset(tmp_path / "a", 20, valid=4)
    b = write_dataset(tmp_path / "b", 20, fingerprint="other-v1")
    cfg = DataConfig(source="shards", datasets=[DatasetSpec(str(a))], seq_len=8)
    data = build_lm_data(cfg)
    assert (len(data.train[0]), len(data.valid[0]), data.tokenizer_fingerprint) == (20, 4, "synthetic-v1")
    with pytest.raises(ValueError, match=r"data.seq_len=16 but .*seq_len=8"):
        build_lm_data(DataConfig(source="shards", datasets=[DatasetSpec(str(a))], seq_len=16))
    with pytest.raises(ValueError, match="must share one tokenizer"):
        build_lm_data(DataConfig(source="shards", datasets=[DatasetSpec(str(a)), DatasetSpec(str(b))], seq_len=8))
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        build_lm_data(DataConfig(source="shards", datasets=[DatasetSpec(str(tmp_path / "nope"))], seq_len=8))
