"""Tokenize text files once into a flat, memory-mappable token array, cached on disk.

Each file is one document, stored as `[bos] + encode(text) + [eos]`, documents back to back. The
cache lives at `<cache>/tokens/<key>.npy` with a `<key>.json` sidecar; the key hashes the
tokenizer fingerprint and every input's resolved path, size and mtime, so editing a file or
changing tokenizer yields a new entry instead of stale tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gigatron.data.corpus import resolve_cache_dir

_HASH_CHUNK = 1 << 20


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer (bytes now, sentencepiece later)."""

    vocab_size: int
    fingerprint: str
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: uint16 below 65536, else uint32."""
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.uint32)


def load_or_build_tokens(
    files: Sequence[str | os.PathLike[str]],
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Return the read-only memory-mapped tokens of `files`, building the cache entry if needed.

    A cached array whose size or sha256 disagrees with its sidecar is never used: it is rebuilt
    with a warning.
    """
    if not files:
        raise ValueError("load_or_build_tokens: no input files given")
    inputs = _describe_inputs(files, tokenizer.fingerprint)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()
    tokens_dir = resolve_cache_dir(cache_dir) / "tokens"
    npy_path = tokens_dir / f"{key}.npy"
    meta_path = tokens_dir / f"{key}.json"

    problem = _validate_cache(npy_path, meta_path, inputs)
    if problem is None:
        return np.load(npy_path, mmap_mode="r")
    if problem != "missing":
        warnings.warn(
            f"token cache {npy_path} is unusable ({problem}); rebuilding it", RuntimeWarning, stacklevel=2
        )

    tokens = _tokenize(inputs["files"], tokenizer)
    tokens_dir.mkdir(parents=True, exist_ok=True)
    _write_cache(tokens, npy_path, meta_path, inputs)
    return np.load(npy_path, mmap_mode="r")


def _describe_inputs(files: Sequence[str | os.PathLike[str]], fingerprint: str) -> dict[str, Any]:
    paths, sizes, mtimes = [], [], []
    for f in files:
        path = Path(f).expanduser()
        try:
            st = path.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"data input file not found: {path}") from None
        if not path.is_file():
            raise FileNotFoundError(f"data input is not a regular file: {path}")
        paths.append(str(path.resolve()))
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime_ns)
    return {"tokenizer": fingerprint, "files": paths, "sizes": sizes, "mtimes_ns": mtimes}


def _tokenize(paths: list[str], tokenizer: Tokenizer) -> np.ndarray:
    dtype = token_dtype(tokenizer.vocab_size)
    docs = []
    for p in paths:
        # errors="replace": one stray byte in a large corpus should not stop a training run.
        text = Path(p).read_text(encoding="utf-8", errors="replace")
        ids = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
        docs.append(np.asarray(ids, dtype=dtype))
    return np.concatenate(docs)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _validate_cache(npy_path: Path, meta_path: Path, inputs: dict[str, Any]) -> str | None:
    """None if the entry is usable, "missing" if absent, else why it must be rebuilt."""
    if not meta_path.is_file():
        return "missing"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable sidecar: {exc}"
    if any(meta.get(k) != v for k, v in inputs.items()):
        return "sidecar describes different inputs"
    if not npy_path.is_file():
        return "token file missing"
    if npy_path.stat().st_size != meta.get("npy_bytes"):
        return f"size {npy_path.stat().st_size} != recorded {meta.get('npy_bytes')}"
    if _file_sha256(npy_path) != meta.get("sha256"):
        return "sha256 mismatch"
    return None


def _atomic_write(path: Path, write: Any) -> None:
    # Concurrent ranks may build the same entry; each writes its own temp file and renames it, so
    # readers only ever see a complete file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_cache(tokens: np.ndarray, npy_path: Path, meta_path: Path, inputs: dict[str, Any]) -> None:
    _atomic_write(npy_path, lambda fh: np.save(fh, tokens, allow_pickle=False))
    meta = {
        **inputs,
        "num_tokens": int(tokens.size),
        "dtype": tokens.dtype.name,
        "npy_bytes": npy_path.stat().st_size,
        "sha256": _file_sha256(npy_path),
    }
    # The sidecar goes last: its presence is what marks the entry as complete.
    _atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta, indent=1).encode("utf-8")))
