"""SentencePiece tokenizers: train one on text files, load it, and describe it in a manifest.

Every trained model uses the same id layout (0 pad, 1 unk, 2 bos, 3 eos) and byte fallback, so
any UTF-8 text round-trips exactly and no input ever maps to unk. Normalization is off
("identity", whitespace kept, no dummy prefix) because documents are encoded whole, newlines
included: a normalizing model could not reproduce the text it was given.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import sentencepiece as spm

from gigatron.data.byte_tokenizer import ByteTokenizer
from gigatron.data.documents import check_utf8_file, iter_documents
from gigatron.data.errors import DataError

MODEL_TYPES = ("bpe", "unigram")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# 4 specials + 256 byte pieces are always present; anything smaller cannot even hold those.
MIN_VOCAB_SIZE = 4 + 256 + 1
# Token ids are stored as uint32 at most, and sentencepiece ids are int32.
MAX_VOCAB_SIZE = 2**31 - 1
# Fixed so that sampling and shuffling of training lines, hence the model, are reproducible.
_TRAINING_SEED = 0


class Tokenizer(Protocol):
    """What the data tools need from a tokenizer (ByteTokenizer and SentencePieceTokenizer)."""

    kind: str
    vocab_size: int
    fingerprint: str
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class BytesTokenizer(ByteTokenizer):
    """ByteTokenizer plus the `kind`/`path` attributes the manifest records (it has no file)."""

    kind: str = "bytes"
    path: Path | None = None


def model_fingerprint(data: bytes) -> str:
    """The fingerprint of a serialized sentencepiece model: "sp-" + 16 hex digits of its sha256."""
    return "sp-" + hashlib.sha256(data).hexdigest()[:16]


class SentencePieceTokenizer:
    """A trained sentencepiece model file; encode() adds no bos/eos.

    Pickles as its path and fingerprint only (cheap to send to worker processes); the model is
    reloaded on first use after unpickling and must still have the same fingerprint.
    """

    kind = "sentencepiece"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        if not self.path.is_file():
            raise FileNotFoundError(f"sentencepiece model {self.path} not found")
        data = self.path.read_bytes()
        self.fingerprint = model_fingerprint(data)
        self._sp: spm.SentencePieceProcessor | None = self._parse(data)
        self.vocab_size = int(self._sp.get_piece_size())
        self.bos_id = int(self._sp.bos_id())
        self.eos_id = int(self._sp.eos_id())
        self.pad_id = int(self._sp.pad_id())

    def _parse(self, data: bytes) -> spm.SentencePieceProcessor:
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(data)
        except (RuntimeError, OSError) as exc:
            raise DataError(f"{self.path}: not a sentencepiece model ({exc})") from exc
        return processor

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        """The loaded model (loaded here after unpickling)."""
        if self._sp is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"sentencepiece model {self.path} not found (it was there when "
                                        "this tokenizer was created)")
            data = self.path.read_bytes()
            found = model_fingerprint(data)
            if found != self.fingerprint:
                # Encoding with a different model than the parent process would mix two id spaces.
                raise DataError(f"{self.path}: the model file changed (fingerprint {found}, expected "
                                f"{self.fingerprint}); re-run with the new tokenizer")
            self._sp = self._parse(data)
        return self._sp

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without bos/eos."""
        return self.processor.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; ids outside the vocabulary raise ValueError."""
        values = [int(i) for i in ids]
        bad = [i for i in values if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"{self.path}: token ids {bad[:5]} are outside [0, {self.vocab_size})")
        return self.processor.decode(values)

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry of one id, e.g. '▁the' or '<0x0A>'."""
        return self.processor.id_to_piece(int(token_id))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sp"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, {self.fingerprint})"


def load_tokenizer(spec: str | os.PathLike[str]) -> BytesTokenizer | SentencePieceTokenizer:
    """"bytes" -> the byte tokenizer; anything else is the path of a sentencepiece .model file."""
    if str(spec) == "bytes":
        return BytesTokenizer()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {str(spec)!r}: no such file; pass 'bytes' or the path of a "
                                "sentencepiece .model file (see `gigatron data tokenizer`)")
    return SentencePieceTokenizer(path)


def tokenizer_manifest_entry(tok: Tokenizer) -> dict[str, Any]:
    """What a dataset manifest records about the tokenizer that wrote it."""
    path = getattr(tok, "path", None)
    return {
        "kind": tok.kind,
        "path": str(Path(path).absolute()) if path is not None else None,
        "fingerprint": tok.fingerprint,
        "bos_id": int(tok.bos_id),
        "eos_id": int(tok.eos_id),
        "pad_id": int(tok.pad_id),
        "vocab_size": int(tok.vocab_size),
    }


def tokenizer_from_manifest(entry: dict[str, Any]) -> BytesTokenizer | SentencePieceTokenizer:
    """Load the tokenizer a manifest names and check it is the one that wrote the dataset."""
    kind = entry.get("kind")
    if kind == "bytes":
        tok: BytesTokenizer | SentencePieceTokenizer = BytesTokenizer()
    elif kind == "sentencepiece":
        path = entry.get("path")
        if not path:
            raise DataError("the manifest's tokenizer entry has no 'path'")
        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer file {path} (recorded in the manifest) is missing")
        tok = SentencePieceTokenizer(path)
    else:
        raise DataError(f"the manifest's tokenizer kind is {kind!r}; valid: 'bytes', 'sentencepiece'")
    if tok.fingerprint != entry.get("fingerprint"):
        raise DataError(f"tokenizer {getattr(tok, 'path', None) or kind} has fingerprint {tok.fingerprint}, "
                        f"but the dataset was written with {entry.get('fingerprint')}")
    return tok


def _trainer_message(exc: RuntimeError) -> str:
    # sentencepiece prefixes messages with "INTERNAL: src/x.cc(123) [condition] "; keep the sentence.
    return re.sub(r"^\w+: \S+\(\d+\) \[.*?\] ", "", str(exc)).strip()


def _training_files(inputs: list[Path], scratch: Path) -> list[Path]:
    """Plain .txt inputs are used as they are; .jsonl/.parquet documents are copied to one text file."""
    files: list[Path] = []
    extracted = scratch / "documents.txt"
    with open(extracted, "w", encoding="utf-8") as handle:
        for path in inputs:
            if path.suffix == ".txt":
                check_utf8_file(path)
                files.append(path)
                continue
            for _, text in iter_documents([glob.escape(str(path))], on_error="raise", stats={}):
                handle.write(text)
                handle.write("\n")
    if extracted.stat().st_size:
        files.append(extracted)
    return files


def _lines(files: list[Path]) -> Iterator[str]:
    # Files were checked to be UTF-8 before training starts: an exception raised in here would
    # have to cross sentencepiece's C++ training loop.
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                yield line.rstrip("\n")


def _input_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return {"path": str(path.absolute()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def train_sentencepiece(inputs: list[Path], vocab_size: int, model_type: Literal["bpe", "unigram"], out: Path,
                        *, max_sentences: int = 2_000_000) -> Path:
    """Train a byte-fallback sentencepiece model on text files and write it to `out` (e.g. tok.model).

    Inputs are .txt files (one sentence per line for training; lines are sampled and shuffled,
    at most `max_sentences`) or .jsonl/.parquet document files. A sidecar `out.with_suffix(".json")`
    records the model's sha256, fingerprint, vocab_size, model_type and inputs. Both files appear
    by rename, so a reader never sees a half-written model. Returns `out`.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not supported; valid: {', '.join(MODEL_TYPES)}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not (
            MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE):
        raise ValueError(f"vocab_size {vocab_size!r} is out of range: it must be an integer in "
                         f"[{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] (4 special ids + 256 byte-fallback pieces "
                         "+ at least one learned piece)")
    if max_sentences < 1:
        raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
    if not inputs:
        raise ValueError("train_sentencepiece: no input files given")
    inputs = [Path(p) for p in inputs]
    for path in inputs:
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer training input {path} not found")
    out = Path(out)
    if out.suffix == ".json":
        raise ValueError(f"{out}: the model file must not end in .json (that name is its sidecar); "
                         "use e.g. tok.model")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as `out` so the final renames stay on one filesystem.
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = _training_files(inputs, scratch)
        if not files:
            raise DataError(f"no text to train on in {', '.join(map(str, inputs))}")
        # Sentences come from Python and the model is returned in memory, so the model proto
        # records no file names: the same inputs and settings give the same bytes (fingerprint).
        spm.set_random_generator_seed(_TRAINING_SEED)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_lines(files), model_writer=model, vocab_size=vocab_size,
                model_type=model_type, byte_fallback=True, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID,
                eos_id=EOS_ID, normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=False, character_coverage=0.9995, num_threads=os.cpu_count() or 1,
                input_sentence_size=max_sentences, shuffle_input_sentence=True, minloglevel=2,
            )
        except RuntimeError as exc:
            raise ValueError(f"sentencepiece training of {out} failed (vocab_size={vocab_size}, "
                             f"model_type={model_type}): {_trainer_message(exc)}") from exc
        data = model.getvalue()
        (scratch / "model.model").write_bytes(data)
        sidecar = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "fingerprint": model_fingerprint(data),
            "vocab_size": vocab_size,
            "model_type": model_type,
            "max_sentences": max_sentences,
            "sentencepiece_version": spm.__version__,
            "inputs": [_input_record(p) for p in inputs],
        }
        (scratch / "model.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        os.replace(scratch / "model.model", out)
        os.replace(scratch / "model.json", out.with_suffix(".json"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out
