"""Shard datasets read by URL: the node cache, retries, verification, and the loader's exactness."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from gigatron.config.schema import DataConfig, DatasetSpec
from gigatron.config.units import parse_byte_size
from gigatron.data.build import build_lm_data
from gigatron.data.errors import RemoteDataError
from gigatron.data.loader import GlobalBatchLoader
from gigatron.data.manifest import load_text_dataset
from gigatron.data.remote import RemoteStore, RetryPolicy, is_transient, is_url
from gigatron.data.shard_cache import ShardCache
from gigatron.data.token_source import TokenShardSource
from tests.http_store import StoreServer, local_s3
from tests.unit.shard_fixtures import ids, write_dataset

FAST = RetryPolicy(attempts=4, backoff_s=0.001)


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "ds", train=95, valid=5, per_shard=10)


def _source(url: str, cache_dir: Path, limit: int | None = None, retry: RetryPolicy = FAST) -> TokenShardSource:
    ds = load_text_dataset(url)
    return TokenShardSource(ds, "train", "auto", ShardCache(RemoteStore(url, retry), cache_dir, limit, True))


def _samples(loader: GlobalBatchLoader, steps: int) -> list[int]:
    return [i for _ in range(steps) for mb in loader.next_batch() for i in ids(mb)]


def test_url_detection_and_sizes():
    assert is_url("https://host/data") and is_url("s3://bucket/x") and is_url("file:///tmp/x")
    assert not is_url("/data/shards") and not is_url("relative/dir") and not is_url(Path("/x"))
    assert parse_byte_size("8MB", "k") == 8_000_000 and parse_byte_size("1.5GiB", "k") == 3 * 2**29
    assert parse_byte_size(4096, "k") == 4096
    with pytest.raises(ValueError, match=r"data.cache_limit='lots' is not a size"):
        parse_byte_size("lots", "data.cache_limit")


def test_transient_errors_are_told_from_permanent_ones():
    class Status(Exception):
        def __init__(self, status: int) -> None:
            self.status = status

    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError()) and is_transient(Status(503))
    assert is_transient(Status(429)) and not is_transient(Status(403)) and not is_transient(Status(404))
    assert not is_transient(FileNotFoundError()) and not is_transient(PermissionError())


def test_samples_from_a_url_equal_the_disk_and_the_cache_stays_bounded(dataset, tmp_path):
    shard_bytes = load_text_dataset(dataset).splits["train"][0].bytes
    with StoreServer(dataset) as server:
        source = _source(server.url, tmp_path / "cache", limit=6 * shard_bytes)
        assert [int(source[i][0]) for i in range(95)] == list(range(95))
        cached = [p for p in (tmp_path / "cache").glob("*.tar")]
        assert len(cached) <= 6
        assert source.tars.cache.evictions.value == 10 - len(cached)
        # Reading again, a shard still cached is not fetched again; an evicted one is.
        gets = server.tar_gets()
        assert int(source[94][0]) == 94 and server.tar_gets() == gets
        assert int(source[0][0]) == 0 and server.tar_gets() == gets + 1


def test_a_restarted_job_reuses_verified_files_and_refetches_changed_ones(dataset, tmp_path):
    with StoreServer(dataset) as server:
        first = _source(server.url, tmp_path / "cache")
        [first[i] for i in range(95)]
        first.tars.close()  # the job ends
        assert server.tar_gets() == 10
        again = _source(server.url, tmp_path / "cache")  # a new process: the files are on disk
        [again[i] for i in range(95)]
        again.tars.close()
        assert server.tar_gets() == 10 and again.tars.cache.downloads.value == 0
        # A cached copy that no longer matches the manifest (a partial file left by a crash, or
        # a dataset rewritten under the same URL) is downloaded again.
        (tmp_path / "cache" / "train-000003.tar").write_bytes(b"partial")
        third = _source(server.url, tmp_path / "cache")
        assert int(third[35][0]) == 35 and server.tar_gets() == 11


def test_transient_failures_are_retried_and_counted(dataset, tmp_path):
    with StoreServer(dataset, status_first=2) as server:
        source = _source(server.url, tmp_path / "cache")
        assert [int(source[i][0]) for i in range(0, 95, 10)] == list(range(0, 95, 10))
        assert source.tars.cache.store.retries.value == 2 * 10
    with StoreServer(dataset, status_first=5) as server:  # more failures than attempts
        source = _source(server.url, tmp_path / "cache2")
        with pytest.raises(RemoteDataError, match=r"train-000000.tar: still failing after 4 attempts"):
            source[0]


def test_a_missing_or_altered_shard_is_named(dataset, tmp_path):
    with StoreServer(dataset) as server:
        source = _source(server.url, tmp_path / "cache")
        (dataset / "train-000002.tar").unlink()
        with pytest.raises(RemoteDataError, match=rf"{server.url}/train-000002.tar: FileNotFoundError"):
            source[25]
        assert server.requests["/train-000002.tar"] == 1  # a 404 is not retried
        shard = dataset / "train-000004.tar"
        data = bytearray(shard.read_bytes())
        data[-2000] ^= 1
        shard.write_bytes(bytes(data))
        with pytest.raises(RemoteDataError, match=rf"{server.url}/train-000004.tar: fails its sha256 check"):
            source[45]
        assert not (tmp_path / "cache" / "train-000004.tar").exists()


def test_a_missing_manifest_is_named(tmp_path):
    with StoreServer(tmp_path) as server, pytest.raises(FileNotFoundError, match="manifest.json not found"):
        load_text_dataset(server.url + "/nothing")


def _read_all(url: str, cache_dir: str, queue) -> None:
    source = _source(url, Path(cache_dir))
    queue.put([int(source[i][0]) for i in range(95)])


def test_ranks_of_a_node_download_each_shard_once(dataset, tmp_path):
    with StoreServer(dataset) as server:
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        readers = [context.Process(target=_read_all, args=(server.url, str(tmp_path / "cache"), queue))
                   for _ in range(3)]
        for reader in readers:
            reader.start()
        results = [queue.get(timeout=60) for _ in readers]
        for reader in readers:
            reader.join(timeout=60)
        assert results == [list(range(95))] * 3
        assert server.tar_gets() == 10


@pytest.mark.parametrize("dp_before, dp_after", [(1, 2), (2, 1)])
def test_loader_order_is_the_disk_order_across_resume_and_dp_sizes(dataset, tmp_path, dp_before, dp_after):
    local = TokenShardSource(load_text_dataset(dataset), "train")
    with StoreServer(dataset) as server:
        remote = _source(server.url, tmp_path / "cache", limit=30_000 * 3)

        def loaders(source, dp: int) -> list[GlobalBatchLoader]:
            return [GlobalBatchLoader(source, 8, 2, rank, dp, seed=7, num_workers=1, prefetch_shards=3)
                    for rank in range(dp)]

        def run(source) -> list[int]:
            before = loaders(source, dp_before)
            seen = [_samples(loader, 3) for loader in before]
            state = before[0].state_dict()
            for loader in before:
                loader.close()
            after = loaders(source, dp_after)
            for loader in after:
                loader.load_state_dict(state)
            seen += [_samples(loader, 3) for loader in after]
            for loader in after:
                loader.close()
            return sorted(i for part in seen for i in part)

        assert run(remote) == run(local)
        assert remote.tars.cache.downloads.value >= 1


def test_build_lm_data_reads_urls_with_the_configured_cache(dataset, tmp_path):
    with StoreServer(dataset) as server:
        cfg = DataConfig(source="shards", datasets=[DatasetSpec(server.url)], seq_len=8,
                         cache_dir=str(tmp_path / "gigatron-cache"), cache_limit="1MB", retries=3)
        data = build_lm_data(cfg)
        cache = data.train[0].tars.cache
        assert cache.limit == 1_000_000 and cache.store.retry.attempts == 3
        assert cache.directory.parent == tmp_path / "gigatron-cache" / "remote"
        assert int(data.valid[0][4][0]) == 500_004


def test_s3_through_a_local_s3_server(dataset, tmp_path, monkeypatch):
    with local_s3(monkeypatch) as fs:
        fs.mkdir("gigatron-test")
        fs.put(str(dataset) + "/", "gigatron-test/ds/", recursive=True)
        source = _source("s3://gigatron-test/ds", tmp_path / "cache")
        assert [int(source[i][0]) for i in range(0, 95, 7)] == list(range(0, 95, 7))
        assert len(list((tmp_path / "cache").glob("*.tar"))) == 10  # 0, 7, ..., 91 touch every shard
