"""Byte tokenizer, token cache, packing and the train/valid split, on small synthetic files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gigatron.config.schema import DataConfig
from gigatron.data import (
    ByteTokenizer,
    PackedSamples,
    build_lm_data,
    load_or_build_tokens,
    split_train_valid,
    token_file,
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_byte_tokenizer_round_trip_and_ids() -> None:
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.fingerprint) == (259, "bytes-v1")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    text = "To be, or not to be — ça va? 🙂"
    ids = tok.encode(text)
    assert ids == [b + 3 for b in text.encode("utf-8")]
    assert min(ids) >= 3 and max(ids) < 259
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == text
    # A truncated multi-byte character decodes to U+FFFD instead of raising.
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"


def test_tokens_layout_and_dtype(tmp_path: Path) -> None:
    a, b = _write(tmp_path, "a.txt", "hello"), _write(tmp_path, "b.txt", "")
    tokens = load_or_build_tokens([a, b], ByteTokenizer(), tmp_path / "cache")
    assert tokens.dtype == np.uint16
    assert isinstance(tokens, np.memmap)
    expected = [1, *ByteTokenizer().encode("hello"), 2, 1, 2]
    assert tokens.tolist() == expected


def test_token_cache_built_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [_write(tmp_path, "a.txt", "abc" * 50), _write(tmp_path, "b.txt", "xyz" * 30)]
    cache = tmp_path / "cache"
    calls = []
    real = token_file._tokenize
    monkeypatch.setattr(token_file, "_tokenize", lambda *a: calls.append(1) or real(*a))

    first = np.array(load_or_build_tokens(files, ByteTokenizer(), cache))
    second = np.array(load_or_build_tokens(files, ByteTokenizer(), cache))
    assert len(calls) == 1
    np.testing.assert_array_equal(first, second)

    (meta_path,) = (cache / "tokens").glob("*.json")
    meta = json.loads(meta_path.read_text())
    assert meta["tokenizer"] == "bytes-v1"
    assert meta["num_tokens"] == first.size
    assert meta["files"] == [str(f.resolve()) for f in files]

    # Editing an input changes its size/mtime, hence the key: a new entry is built.
    files[1].write_text("changed text", encoding="utf-8")
    load_or_build_tokens(files, ByteTokenizer(), cache)
    assert len(calls) == 2
    assert len(list((cache / "tokens").glob("*.npy"))) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupted_cache_is_detected_and_rebuilt(tmp_path: Path, damage: str) -> None:
    files = [_write(tmp_path, "a.txt", "some text for the cache " * 20)]
    cache = tmp_path / "cache"
    good = np.array(load_or_build_tokens(files, ByteTokenizer(), cache))
    (npy,) = (cache / "tokens").glob("*.npy")
    raw = npy.read_bytes()
    if damage == "flip":
        npy.write_bytes(raw[:-5] + bytes([raw[-5] ^ 0xFF]) + raw[-4:])
    elif damage == "truncate":
        npy.write_bytes(raw[:-10])
    else:
        npy.unlink()

    with pytest.warns(RuntimeWarning, match="rebuilding"):
        rebuilt = load_or_build_tokens(files, ByteTokenizer(), cache)
    np.testing.assert_array_equal(np.array(rebuilt), good)
    assert npy.read_bytes() == raw


def test_missing_input_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_or_build_tokens([missing], ByteTokenizer(), tmp_path / "cache")


def test_packed_samples_match_direct_slicing() -> None:
    tokens = np.arange(103, dtype=np.uint16)
    seq_len = 10
    full = PackedSamples(tokens, seq_len)
    assert len(full) == 10  # (103 - 1) // 10
    for i in range(len(full)):
        sample = full[i]
        assert sample.dtype == np.int64 and sample.shape == (seq_len + 1,)
        np.testing.assert_array_equal(sample, tokens[i * seq_len : i * seq_len + seq_len + 1])
    np.testing.assert_array_equal(full[-1], full[9])
    with pytest.raises(IndexError):
        full[10]

    window = PackedSamples(tokens, seq_len, start=3, end=7)
    assert len(window) == 4
    np.testing.assert_array_equal(window[0], full[3])
    np.testing.assert_array_equal(window[3], full[6])
    with pytest.raises(ValueError):
        PackedSamples(tokens, seq_len, start=0, end=11)


@pytest.mark.parametrize(
    ("num_samples", "fraction", "n_valid"),
    [(100, 0.01, 1), (100, 0.05, 5), (30, 0.1, 3), (10, 0.001, 1), (2, 0.5, 1), (3, 0.9, 2)],
)
def test_split_sizes(num_samples: int, fraction: float, n_valid: int) -> None:
    seq_len = 4
    tokens = np.arange(num_samples * seq_len + 1)
    train, valid = split_train_valid(tokens, seq_len, fraction)
    assert valid is not None
    assert (len(train), len(valid)) == (num_samples - n_valid, n_valid)
    np.testing.assert_array_equal(valid[0], PackedSamples(tokens, seq_len)[num_samples - n_valid])


def test_split_without_validation_and_too_small_corpus() -> None:
    tokens = np.arange(41)
    train, valid = split_train_valid(tokens, 4, 0.0)
    assert valid is None and len(train) == 10
    with pytest.raises(ValueError, match="data.seq_len"):
        split_train_valid(tokens, 30, 0.1)


def test_build_lm_data_from_files(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    for i in range(3):
        _write(tmp_path / "docs", f"{i}.txt", f"document number {i} " * 40)
    cfg = DataConfig(
        source="files",
        paths=[str(tmp_path / "docs" / "*.txt")],
        seq_len=16,
        valid_fraction=0.1,
        cache_dir=str(tmp_path / "cache"),
    )
    data = build_lm_data(cfg)
    assert data.vocab_size == 259 and data.tokenizer_fingerprint == "bytes-v1"
    assert data.valid is not None and len(data.valid) >= 1
    assert data.train[0][0] == 1  # the first document starts with bos

    with pytest.raises(FileNotFoundError, match=r"\*\.md"):
        build_lm_data(DataConfig(source="files", paths=[str(tmp_path / "*.md")], cache_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"data\.tokenizer.*bytes"):
        build_lm_data(DataConfig(tokenizer="gpt2", cache_dir=str(tmp_path)))
