"""The manifest of a token-shard dataset: what the writer promises and the reader checks.

A dataset directory holds `manifest.json` and WebDataset tars `<split>-NNNNNN.tar`; each tar
member `<key>.tokens.npy` is one packed sample of `seq_len + 1` token ids.

    {
      "format": "gigatron-text-shards/1",
      "seq_len": 128, "dtype": "uint16", "vocab_size": 2048,
      "tokenizer": {"kind": "sentencepiece" | "bytes", "path": "...", "fingerprint": "sp-…",
                    "bos_id": 2, "eos_id": 3, "pad_id": 0},
      "valid_fraction": 0.01,
      "sources": [{"path": "...", "bytes": 123, "sha256": "..."}],
      "splits": {"train": {"num_samples": N, "num_tokens": T,
                           "shards": [{"file": "train-000000.tar", "samples": n, "bytes": b, "sha256": h}]},
                 "valid": {...}},
      "skipped_documents": 0
    }
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
TEXT_FORMAT = "gigatron-text-shards/1"
SAMPLE_SUFFIX = "tokens.npy"


@dataclass(frozen=True)
class ShardInfo:
    """One tar of a split."""

    path: Path
    samples: int
    bytes: int
    sha256: str
    # Member keys are key_prefix + a 10-digit index, counted from first_index (None: from the
    # shard's position in its split). Array builds number samples per input file (shard_tasks.py).
    key_prefix: str = ""
    first_index: int | None = None


@dataclass(frozen=True)
class TextDataset:
    """A parsed, checked manifest. `root` is a local directory, or a URL (then each shard's `path`
    is its bare file name, relative to the URL)."""

    root: Path | str
    seq_len: int
    dtype: str
    vocab_size: int
    tokenizer: dict[str, Any]
    splits: dict[str, list[ShardInfo]]
    raw: dict[str, Any]

    def num_samples(self, split: str) -> int:
        """Samples in a split (0 if the split is absent)."""
        return sum(s.samples for s in self.splits.get(split, []))

    @property
    def fingerprint(self) -> str:
        """The tokenizer fingerprint recorded by the writer."""
        return str(self.tokenizer["fingerprint"])


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require(raw: dict, key: str, kind: type | tuple[type, ...], where: str | Path) -> Any:
    if key not in raw:
        raise ValueError(f"{where}: missing key '{key}'")
    if not isinstance(raw[key], kind):
        raise ValueError(f"{where}: key '{key}' must be {kind}, got {raw[key]!r}")
    return raw[key]


def read_manifest_json(root: str | Path) -> tuple[dict[str, Any], str]:
    """(parsed manifest.json, its path or URL for messages) of a dataset directory or URL."""
    from gigatron.data.remote import RemoteStore, is_url

    if is_url(str(root)):
        store = RemoteStore(str(root))
        path = store.locate(MANIFEST_NAME)
        if store.size(MANIFEST_NAME) is None:
            raise FileNotFoundError(f"{path} not found: is {root} a directory written by `gigatron data shard`?")
        data = store.read_bytes(MANIFEST_NAME)
    else:
        local = Path(root) / MANIFEST_NAME
        path = str(local)
        if not local.is_file():
            raise FileNotFoundError(f"{local} not found: is {root} a directory written by `gigatron data shard`?")
        data = local.read_bytes()
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a JSON object")
    return raw, path


def load_text_dataset(root: str | Path) -> TextDataset:
    """Read and check `<root>/manifest.json` (root: a directory or a URL); errors name the file and key."""
    from gigatron.data.remote import is_url

    raw, path = read_manifest_json(root)
    remote = is_url(str(root))
    base = Path("") if remote else Path(root)
    root = str(root).rstrip("/") if remote else Path(root)
    if raw.get("format") != TEXT_FORMAT:
        raise ValueError(f"{path}: format is {raw.get('format')!r}, expected {TEXT_FORMAT!r}")
    seq_len = _require(raw, "seq_len", int, path)
    dtype = _require(raw, "dtype", str, path)
    if dtype not in ("uint16", "uint32"):
        raise ValueError(f"{path}: dtype {dtype!r} must be 'uint16' or 'uint32'")
    vocab_size = _require(raw, "vocab_size", int, path)
    tokenizer = _require(raw, "tokenizer", dict, path)
    if "fingerprint" not in tokenizer:
        raise ValueError(f"{path}: tokenizer.fingerprint is missing")
    splits: dict[str, list[ShardInfo]] = {}
    for name, split in _require(raw, "splits", dict, path).items():
        shards = []
        for i, entry in enumerate(split.get("shards", [])):
            try:
                first = entry.get("first_index")
                shards.append(ShardInfo(base / entry["file"], int(entry["samples"]), int(entry["bytes"]),
                                        str(entry["sha256"]), str(entry.get("key_prefix", "")),
                                        None if first is None else int(first)))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: splits.{name}.shards[{i}] is malformed ({exc!r})") from exc
        splits[name] = shards
    return TextDataset(root, seq_len, dtype, vocab_size, tokenizer, splits, raw)


def verify_shard(shard: ShardInfo, checksum: bool = True) -> str | None:
    """None if the shard exists with its recorded size (and sha256), else what is wrong."""
    if not shard.path.is_file():
        return f"{shard.path} is missing"
    size = shard.path.stat().st_size
    if size != shard.bytes:
        return f"{shard.path} has {size} bytes, the manifest says {shard.bytes} (truncated or replaced)"
    if checksum and file_sha256(shard.path) != shard.sha256:
        return f"{shard.path} fails its sha256 check against the manifest"
    return None
