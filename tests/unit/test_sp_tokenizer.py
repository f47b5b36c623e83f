"""Training, loading, fingerprinting and pickling sentencepiece tokenizers."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from gigatron.data.errors import DataError
from gigatron.data.sp_tokenizer import (
    BytesTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    tokenizer_manifest_entry,
    train_sentencepiece,
)

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards",
         "quietly", "hex", "jolly", "kings"]


def _corpus(path: Path, lines: int = 400, salt: int = 0) -> Path:
    text = "\n".join(" ".join(WORDS[(i * 7 + j * 3 + salt) % len(WORDS)] for j in range(9)) for i in range(lines))
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sp")
    return train_sentencepiece([_corpus(root / "a.txt")], 300, "bpe", root / "tok.model")


def test_train_writes_model_and_sidecar(model: Path) -> None:
    tok = SentencePieceTokenizer(model)
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert tok.vocab_size == sidecar["vocab_size"] == 300
    assert sidecar["fingerprint"] == tok.fingerprint == "sp-" + sidecar["sha256"][:16]
    assert sidecar["model_type"] == "bpe"
    assert sidecar["inputs"][0]["path"].endswith("a.txt")
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.kind) == (0, 2, 3, "sentencepiece")
    # No temporary files are left next to the model.
    assert sorted(p.name for p in model.parent.iterdir()) == ["a.txt", "tok.json", "tok.model"]


def test_round_trip_with_byte_fallback(model: Path) -> None:
    tok = SentencePieceTokenizer(model)
    text = "the lazy dog\n\n  Ünïcödé ☃ 日本語 🎉\tZ~{}"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.bos_id not in ids and tok.eos_id not in ids and 1 not in ids  # never unk
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")


def test_unigram_trains(tmp_path: Path) -> None:
    out = train_sentencepiece([_corpus(tmp_path / "a.txt")], 300, "unigram", tmp_path / "u.model")
    tok = SentencePieceTokenizer(out)
    assert tok.decode(tok.encode("jolly kings ü")) == "jolly kings ü"


def test_fingerprint_changes_with_the_model(tmp_path: Path, model: Path) -> None:
    other = train_sentencepiece([_corpus(tmp_path / "b.txt", salt=5)], 320, "bpe", tmp_path / "tok.model")
    assert SentencePieceTokenizer(other).fingerprint != SentencePieceTokenizer(model).fingerprint
    # Retraining in place replaces the model and its sidecar together.
    again = train_sentencepiece([_corpus(tmp_path / "b.txt", salt=5)], 330, "bpe", other)
    sidecar = json.loads(again.with_suffix(".json").read_text())
    assert sidecar["fingerprint"] == SentencePieceTokenizer(again).fingerprint
    assert sidecar["vocab_size"] == 330


def test_pickle_reloads_lazily_and_checks_the_file(tmp_path: Path, model: Path) -> None:
    copy = tmp_path / "tok.model"
    copy.write_bytes(model.read_bytes())
    tok = SentencePieceTokenizer(copy)
    payload = pickle.dumps(tok)
    assert len(payload) < 1000  # the path, not the model
    clone = pickle.loads(payload)
    assert clone.encode("a lazy dog") == tok.encode("a lazy dog")
    assert clone.fingerprint == tok.fingerprint and clone.vocab_size == tok.vocab_size

    copy.write_bytes(copy.read_bytes() + b"\0")  # the file changes under a pickled tokenizer
    stale = pickle.loads(payload)
    with pytest.raises(DataError, match="model file changed"):
        stale.encode("dog")


def test_non_utf8_input_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbroken \xff line\n")
    with pytest.raises(DataError, match=r"bad\.txt.*byte offset 17"):
        train_sentencepiece([bad], 300, "bpe", tmp_path / "tok.model")
    assert not (tmp_path / "tok.model").exists()


@pytest.mark.parametrize("vocab_size", [10, 260])
def test_vocab_too_small(tmp_path: Path, vocab_size: int) -> None:
    with pytest.raises(ValueError, match=f"vocab_size {vocab_size} is out of range"):
        train_sentencepiece([_corpus(tmp_path / "a.txt")], vocab_size, "bpe", tmp_path / "tok.model")


def test_vocab_too_large_for_the_text(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"vocab_size=50000.*too high"):
        train_sentencepiece([_corpus(tmp_path / "a.txt")], 50_000, "bpe", tmp_path / "tok.model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_bad_model_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid: bpe, unigram"):
        train_sentencepiece([_corpus(tmp_path / "a.txt")], 300, "wordpiece", tmp_path / "tok.model")  # type: ignore[arg-type]


def test_trains_on_jsonl_documents(tmp_path: Path) -> None:
    lines = [json.dumps({"text": " ".join(WORDS[i % 5:] + WORDS[: i % 5])}) for i in range(300)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    tok = SentencePieceTokenizer(train_sentencepiece([tmp_path / "d.jsonl"], 290, "bpe", tmp_path / "t.model"))
    assert tok.decode(tok.encode("seven wizards")) == "seven wizards"


def test_load_tokenizer(model: Path, tmp_path: Path) -> None:
    tok = load_tokenizer("bytes")
    assert isinstance(tok, BytesTokenizer)
    entry = tokenizer_manifest_entry(tok)
    assert entry == {"kind": "bytes", "path": None, "fingerprint": "bytes-v1", "bos_id": 1, "eos_id": 2,
                     "pad_id": 0, "vocab_size": 259}
    sp = load_tokenizer(str(model))
    entry = tokenizer_manifest_entry(sp)
    assert entry["kind"] == "sentencepiece" and Path(entry["path"]).is_absolute()
    assert entry["fingerprint"] == sp.fingerprint and entry["vocab_size"] == 300
    with pytest.raises(FileNotFoundError, match="missing.model"):
        load_tokenizer(str(tmp_path / "missing.model"))


def test_training_is_reproducible(tmp_path: Path, model: Path) -> None:
    # Same text and settings, different file names and directories: the same model bytes.
    corpus = _corpus(tmp_path / "renamed.txt")
    again = train_sentencepiece([corpus], 300, "bpe", tmp_path / "sub" / "other.model")
    assert again.read_bytes() == model.read_bytes()
