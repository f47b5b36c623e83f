"""Writing token shards: contents, determinism, manifest, overwrite safety and empty input."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from gigatron.data.byte_tokenizer import ByteTokenizer
from gigatron.data.errors import DataError
from gigatron.data.manifest import load_text_dataset
from gigatron.data.text_shards import is_valid_sample, write_text_shards

SEQ_LEN = 15


def _docs(root: Path, count: int = 12) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    texts = [f"document {i}: " + "lorem ipsum dolor sit amet " * (i % 5 + 1) for i in range(count)]
    for i, text in enumerate(texts[: count // 2]):
        (root / f"{i:02d}.txt").write_text(text, encoding="utf-8")
    with open(root / "rest.jsonl", "w", encoding="utf-8") as handle:
        for text in texts[count // 2:]:
            handle.write(json.dumps({"text": text}) + "\n")
    return texts


def _expected_samples(texts: list[str]) -> np.ndarray:
    tok = ByteTokenizer()
    stream = [t for text in texts for t in tok.encode(text) + [tok.eos_id]]
    n = len(stream) // (SEQ_LEN + 1)
    return np.array(stream[: n * (SEQ_LEN + 1)]).reshape(n, SEQ_LEN + 1)


def _read_split(out: Path, manifest: dict, split: str) -> list[np.ndarray]:
    samples = []
    for shard in manifest["splits"][split]["shards"]:
        with tarfile.open(out / shard["file"]) as tar:
            names = [m.name for m in tar.getmembers()]
            assert len(names) == shard["samples"]
            for name in names:
                assert name == f"{len(samples):010d}.tokens.npy"
                array = np.load(io.BytesIO(tar.extractfile(name).read()), allow_pickle=False)
                assert array.dtype == np.uint16 and array.shape == (SEQ_LEN + 1,)
                samples.append(array)
    return samples


def _write(tmp_path: Path, out: Path, **kwargs) -> dict:
    inputs = [str(tmp_path / "in" / "*.txt"), str(tmp_path / "in" / "*.jsonl")]
    return write_text_shards(inputs, "bytes", SEQ_LEN, out, **kwargs)


def test_samples_reproduce_the_token_stream(tmp_path: Path) -> None:
    expected = _expected_samples(_docs(tmp_path / "in"))
    out = tmp_path / "ds"
    manifest = _write(tmp_path, out, samples_per_shard=7, valid_fraction=0.0, workers=1)
    train = _read_split(out, manifest, "train")
    np.testing.assert_array_equal(np.stack(train), expected)
    assert manifest["splits"]["valid"] == {"num_samples": 0, "num_tokens": 0, "shards": []}
    stream_len = sum(len(t) + 1 for t in (p.read_text() for p in sorted((tmp_path / "in").glob("*.txt"))))
    assert manifest["total_tokens"] == expected.size + manifest["dropped_tokens"] > stream_len
    assert 0 <= manifest["dropped_tokens"] <= SEQ_LEN
    assert [s["samples"] for s in manifest["splits"]["train"]["shards"]][:-1] == [7] * (len(train) // 7)


def test_valid_split_follows_the_hash_rule(tmp_path: Path) -> None:
    expected = _expected_samples(_docs(tmp_path / "in", count=40))
    out = tmp_path / "ds"
    manifest = _write(tmp_path, out, samples_per_shard=5, valid_fraction=0.2, workers=1)
    train, valid = iter(_read_split(out, manifest, "train")), iter(_read_split(out, manifest, "valid"))
    rebuilt = [next(valid) if is_valid_sample(i, 0.2) else next(train) for i in range(len(expected))]
    np.testing.assert_array_equal(np.stack(rebuilt), expected)
    assert next(train, None) is None and next(valid, None) is None
    assert 0 < manifest["splits"]["valid"]["num_samples"] < len(expected) // 2


def test_last_sample_is_valid_when_the_hash_picks_none(tmp_path: Path) -> None:
    expected = _expected_samples(_docs(tmp_path / "in"))
    fraction = 1e-9
    assert not any(is_valid_sample(i, fraction) for i in range(len(expected)))
    out = tmp_path / "ds"
    manifest = _write(tmp_path, out, valid_fraction=fraction, workers=1)
    np.testing.assert_array_equal(np.stack(_read_split(out, manifest, "valid")), expected[-1:])
    np.testing.assert_array_equal(np.stack(_read_split(out, manifest, "train")), expected[:-1])


def test_identical_output_for_any_worker_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gigatron.data.text_shards as text_shards

    _docs(tmp_path / "in", count=30)
    monkeypatch.setattr(text_shards, "_CHUNK_DOCS", 2)  # many chunks, so the workers really interleave
    one = _write(tmp_path, tmp_path / "w1", samples_per_shard=4, workers=1)
    two = _write(tmp_path, tmp_path / "w2", samples_per_shard=4, workers=2)
    assert one == two
    files = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "w2").iterdir())
    for name in files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_manifest_matches_the_files(tmp_path: Path) -> None:
    _docs(tmp_path / "in", count=30)
    out = tmp_path / "ds"
    manifest = _write(tmp_path, out, samples_per_shard=6, valid_fraction=0.1, workers=2)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "gigatron-text-shards/1"
    assert (manifest["seq_len"], manifest["dtype"], manifest["vocab_size"]) == (SEQ_LEN, "uint16", 259)
    assert manifest["tokenizer"]["kind"] == "bytes" and manifest["tokenizer"]["fingerprint"] == "bytes-v1"
    assert manifest["documents"] == 30 and manifest["skipped_documents"] == 0
    for source in manifest["sources"]:
        data = Path(source["path"]).read_bytes()
        assert source["bytes"] == len(data) and source["sha256"] == hashlib.sha256(data).hexdigest()
    for split, entry in manifest["splits"].items():
        assert entry["num_samples"] == sum(s["samples"] for s in entry["shards"])
        assert entry["num_tokens"] == entry["num_samples"] * (SEQ_LEN + 1)
        for i, shard in enumerate(entry["shards"]):
            data = (out / shard["file"]).read_bytes()
            assert shard["file"] == f"{split}-{i:06d}.tar"
            assert shard["bytes"] == len(data) and shard["sha256"] == hashlib.sha256(data).hexdigest()
    dataset = load_text_dataset(out)
    assert dataset.num_samples("train") == manifest["splits"]["train"]["num_samples"]
    assert dataset.fingerprint == "bytes-v1"
    # Nothing but the dataset is left in the output directory or next to it.
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".tar")) == ["manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "in"]


def test_existing_dataset_is_kept_without_overwrite(tmp_path: Path) -> None:
    _docs(tmp_path / "in")
    out = tmp_path / "ds"
    _write(tmp_path, out, valid_fraction=0.0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="already holds a dataset.*overwrite"):
        _write(tmp_path, out, valid_fraction=0.5)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_failed_overwrite_leaves_the_old_dataset_intact(tmp_path: Path) -> None:
    _docs(tmp_path / "in")
    out = tmp_path / "ds"
    _write(tmp_path, out, valid_fraction=0.0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "in" / "zz.jsonl").write_text('{"text": "fine"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"zz\.jsonl:2: not valid JSON"):
        _write(tmp_path, out, valid_fraction=0.0, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "in"]  # no staging left behind

    manifest = _write(tmp_path, out, valid_fraction=0.0, overwrite=True, on_error="skip")
    assert manifest["skipped_documents"] == 1
    assert load_text_dataset(out).num_samples("train") == manifest["splits"]["train"]["num_samples"]


def test_foreign_files_are_never_replaced(tmp_path: Path) -> None:
    _docs(tmp_path / "in")
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    with pytest.raises(DataError, match=r"not part of a token-shard dataset \(notes\.md\)"):
        _write(tmp_path, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.md"]


def test_empty_input(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no documents"):
        write_text_shards([str(tmp_path / "empty.jsonl")], "bytes", SEQ_LEN, tmp_path / "ds")
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(DataError, match=r"5 tokens .*fewer than one sample of seq_len \+ 1 = 16"):
        write_text_shards([str(tmp_path / "short.txt")], "bytes", SEQ_LEN, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "short.txt"]


@pytest.mark.parametrize("kwargs, message", [
    ({"seq_len": 0}, "seq_len must be a positive integer"),
    ({"samples_per_shard": 0}, "samples_per_shard must be a positive integer"),
    ({"valid_fraction": 1.0}, r"valid_fraction must be in \[0, 1\)"),
    ({"workers": 0}, "workers must be a positive integer"),
    ({"on_error": "ignore"}, "on_error must be one of raise, skip"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    (tmp_path / "a.txt").write_text("x" * 100)
    args = {"seq_len": SEQ_LEN, **kwargs}
    seq_len = args.pop("seq_len")
    with pytest.raises(ValueError, match=message):
        write_text_shards([str(tmp_path / "a.txt")], "bytes", seq_len, tmp_path / "ds", **args)


def test_sentencepiece_tokenizer_and_missing_file(tmp_path: Path) -> None:
    from gigatron.data.sp_tokenizer import SentencePieceTokenizer, train_sentencepiece

    texts = _docs(tmp_path / "in", count=40)
    model = train_sentencepiece(sorted((tmp_path / "in").glob("*.txt")), 300, "bpe", tmp_path / "tok.model")
    tok = SentencePieceTokenizer(model)
    out = tmp_path / "ds"
    manifest = write_text_shards([str(tmp_path / "in" / "*.txt"), str(tmp_path / "in" / "*.jsonl")],
                                 str(model), SEQ_LEN, out, valid_fraction=0.0, workers=2)
    assert manifest["tokenizer"]["fingerprint"] == tok.fingerprint and manifest["vocab_size"] == 300
    stream = [t for text in texts for t in tok.encode(text) + [tok.eos_id]]
    train = _read_split(out, manifest, "train")
    assert np.concatenate(train).tolist() == stream[: len(train) * (SEQ_LEN + 1)]
    with pytest.raises(FileNotFoundError, match="nope.model"):
        write_text_shards([str(tmp_path / "in" / "*.txt")], str(tmp_path / "nope.model"), SEQ_LEN, tmp_path / "x")
