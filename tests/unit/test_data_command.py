"""`gigatron data ...` end to end on tiny data, through gigatron.commands.main."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from gigatron.commands import main

LINES = [f"line {i}: the cat sat on the mat and the dog ran to the park" for i in range(200)]


@pytest.fixture
def dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"{i}.txt").write_text("\n".join(LINES[i * 50:(i + 1) * 50]) + "\n", encoding="utf-8")
    model = tmp_path / "tok.model"
    assert main(["data", "tokenizer", "--input", str(corpus / "*.txt"), "--vocab-size", "300",
                 "--out", str(model)]) == 0
    assert "fingerprint sp-" in capsys.readouterr().out
    out = tmp_path / "ds"
    assert main(["data", "shard", "--input", str(corpus / "*.txt"), "--tokenizer", str(model), "--seq-len", "16",
                 "--out", str(out), "--shard-size", "20", "--valid-fraction", "0.1", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "train:" in printed
    return out


def test_inspect_ok(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(dataset), "--samples", "5"]) == 0
    out = capsys.readouterr().out
    assert "seq_len 16" in out and "vocab_size 300" in out
    assert "top 20 token ids over the first 5 train samples" in out
    assert "decoded ---" in out and "the " in out.split("decoded ---")[1]
    assert "OK: every check passed" in out


def test_inspect_without_tokenizer_file(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (dataset.parent / "tok.model").unlink()
    assert main(["data", "inspect", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "tok.model (recorded in the manifest) is missing; skipping decoding" in out


def test_inspect_detects_a_truncated_shard(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = dataset / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    assert main(["data", "inspect", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "train-000001.tar has 3000 bytes" in out
    assert "train-000001.tar: unreadable after member" in out or "train-000001.tar: holds" in out


def test_inspect_detects_a_corrupted_member(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = dataset / "train-000000.tar"
    with tarfile.open(shard) as tar:
        member = tar.getmember("0000000003.tokens.npy")
    data = bytearray(shard.read_bytes())
    data[member.offset_data: member.offset_data + 6] = b"NOTNPY"
    shard.write_bytes(bytes(data))
    assert main(["data", "inspect", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert "train-000000.tar fails its sha256 check" in out
    assert "train-000000.tar member 0000000003.tokens.npy: not a valid .npy array" in out
    # --no-verify only checks sizes, which still match.
    assert main(["data", "inspect", str(dataset), "--no-verify"]) == 0


def test_inspect_detects_a_wrong_length_member(tmp_path: Path, dataset: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import io

    import numpy as np

    from gigatron.data.manifest import file_sha256

    # A well-formed tar whose manifest entry is updated: only the member check can notice.
    shard = dataset / "valid-000000.tar"
    payload = io.BytesIO()
    np.save(payload, np.zeros(5, np.uint16))
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("0000000000.tokens.npy")
        info.size = len(payload.getvalue())
        tar.addfile(info, io.BytesIO(payload.getvalue()))
    manifest = json.loads((dataset / "manifest.json").read_text())
    entry = manifest["splits"]["valid"]["shards"][0]
    entry.update(bytes=shard.stat().st_size, sha256=file_sha256(shard))
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    assert main(["data", "inspect", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert "valid-000000.tar member 0000000000.tokens.npy: array is uint16 of shape (5,)" in out


def test_bad_input_exits_2_without_traceback(tmp_path: Path, dataset: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "shard", "--input", str(tmp_path / "none" / "*.txt"), "--tokenizer", "bytes",
                 "--seq-len", "8", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gigatron data shard: input pattern") and "Traceback" not in err

    assert main(["data", "shard", "--input", str(tmp_path / "corpus" / "*.txt"), "--tokenizer", "bytes",
                 "--seq-len", "8", "--out", str(dataset)]) == 2
    assert "already holds a dataset" in capsys.readouterr().err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{oops\n')
    assert main(["data", "shard", "--input", str(bad), "--tokenizer", "bytes", "--seq-len", "8",
                 "--out", str(tmp_path / "y")]) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err

    assert main(["data", "tokenizer", "--input", str(tmp_path / "corpus" / "*.txt"), "--vocab-size", "100",
                 "--out", str(tmp_path / "t.model")]) == 2
    assert "gigatron data tokenizer: vocab_size 100 is out of range" in capsys.readouterr().err

    assert main(["data", "inspect", str(tmp_path / "corpus")]) == 2
    assert "manifest.json not found" in capsys.readouterr().err


def test_shard_images_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gigatron.data.image_shards")
    shapes = pytest.importorskip("gigatron.data.shapes")
    captions = shapes.generate_shapes(tmp_path / "shapes", 5, seed=0)
    out = tmp_path / "img"
    assert main(["data", "shard-images", "--input", str(captions), "--out", str(out), "--shard-size", "2"]) == 0
    assert main(["data", "inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gigatron-image-shards/1, 5 samples" in printed and "first caption:" in printed
    assert "OK: every check passed" in printed
