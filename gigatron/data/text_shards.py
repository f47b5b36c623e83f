"""Tokenize documents into fixed-length samples and write them as WebDataset token shards.

The output is a function of the inputs, the tokenizer, `seq_len`, `samples_per_shard` and
`valid_fraction` only: workers tokenize chunks of documents but results are consumed in input
order, and tars are written with fixed metadata, so any worker count gives byte-identical shards.
The dataset is built in a temporary sibling directory and moved into place when complete, so a
failure (bad input, full disk, Ctrl-C) never leaves a partial dataset nor touches an old one.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gigatron.data.documents import ON_ERROR, iter_documents
from gigatron.data.errors import DataError
from gigatron.data.manifest import MANIFEST_NAME, SAMPLE_SUFFIX, TEXT_FORMAT
from gigatron.data.remote import is_url
from gigatron.data.sp_tokenizer import Tokenizer, load_tokenizer, tokenizer_manifest_entry
from gigatron.data.tar_writer import RollingTarWriter

SPLITS = ("train", "valid")
SPLIT_RULE = ("sample i (0-based, in stream order) is valid iff int.from_bytes(blake2b(i.to_bytes(8, 'little'), "
              "digest_size=8).digest(), 'little') < floor(valid_fraction * 2**64); if valid_fraction > 0 and "
              "no sample qualifies, the last sample is valid")
# Documents are sent to workers in chunks of about this many characters (or documents): large
# enough to amortize inter-process traffic, small enough to keep every worker busy.
_CHUNK_CHARS = 1 << 20
_CHUNK_DOCS = 1024


def token_dtype(vocab_size: int) -> str:
    """The storage dtype for ids of a vocabulary: uint16 when every id fits, else uint32."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _split_threshold(valid_fraction: float) -> int:
    return int(valid_fraction * 2**64)


def is_valid_sample(index: int, valid_fraction: float) -> bool:
    """The hash part of the split rule: does sample `index` of the stream go to "valid"?"""
    return _split_of(index, _split_threshold(valid_fraction)) == "valid"


# ---------------------------------------------------------------- tokenizing


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tok: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tok


def _encode_in_worker(chunk: list[tuple[str, str]]) -> np.ndarray:
    assert _worker_tokenizer is not None
    return encode_documents(_worker_tokenizer, chunk)


def encode_documents(tok: Tokenizer, chunk: list[tuple[str, str]]) -> np.ndarray:
    """Token ids of (source, text) documents, each followed by eos, concatenated (uint16/uint32)."""
    dtype = token_dtype(tok.vocab_size)
    parts = []
    for source, text in chunk:
        ids = np.asarray(tok.encode(text) + [tok.eos_id], dtype=np.int64)
        if ids.min() < 0 or ids.max() >= tok.vocab_size:
            # Would otherwise wrap around silently when cast to uint16.
            raise DataError(f"{source}: tokenizer {tok.fingerprint} produced ids outside [0, {tok.vocab_size})")
        parts.append(ids.astype(dtype))
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def _chunks(documents: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    chars = 0
    for document in documents:
        chunk.append(document)
        chars += len(document[1])
        if chars >= _CHUNK_CHARS or len(chunk) >= _CHUNK_DOCS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def tokenizer_pool(tok: Tokenizer, workers: int) -> Any:
    """Worker processes holding `tok`, for `_token_stream` (a context manager)."""
    return multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=(tok,))


def _token_stream(tok: Tokenizer, documents: Iterable[tuple[str, str]], workers: int,
                  pool: Any = None) -> Iterator[np.ndarray]:
    """Encoded chunks in input order. At most 2 chunks per worker are in flight, bounding memory."""
    if workers == 1:
        for chunk in _chunks(documents):
            yield encode_documents(tok, chunk)
        return
    if pool is None:
        with tokenizer_pool(tok, workers) as own:
            yield from _token_stream(tok, documents, workers, own)
        return
    pending: deque[Any] = deque()
    for chunk in _chunks(documents):
        pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
        if len(pending) >= 2 * workers:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _samples(arrays: Iterable[np.ndarray], sample_len: int, counts: dict[str, int]) -> Iterator[np.ndarray]:
    """Cut the concatenated stream into non-overlapping samples; counts["dropped_tokens"] gets the tail."""
    leftover: np.ndarray | None = None
    for tokens in arrays:
        counts["total_tokens"] += len(tokens)
        buffer = tokens if leftover is None or not len(leftover) else np.concatenate([leftover, tokens])
        full = len(buffer) // sample_len
        yield from buffer[: full * sample_len].reshape(full, sample_len)
        leftover = buffer[full * sample_len:].copy()
    counts["dropped_tokens"] = 0 if leftover is None else len(leftover)


# ---------------------------------------------------------------- writing


class _ShardWriter(RollingTarWriter):
    """One split's token samples as `<key>.tokens.npy` members."""

    def __init__(self, directory: Path, split: str, samples_per_shard: int, sample_len: int, dtype: str,
                 prefix: str | None = None, key_prefix: str = "") -> None:
        super().__init__(directory, split, samples_per_shard, prefix)
        self.key_prefix = key_prefix
        self.dtype = np.dtype(dtype).newbyteorder("<")
        # Every member has the same shape and dtype, hence the same .npy header: build it once.
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(
            np.zeros(sample_len, self.dtype)))
        self._npy_header = header.getvalue()

    def write(self, sample: np.ndarray) -> None:  # type: ignore[override]
        payload = self._npy_header + np.ascontiguousarray(sample, dtype=self.dtype).tobytes()
        super().write({"__key__": f"{self.key_prefix}{self.count:010d}", SAMPLE_SUFFIX: payload})


PROGRESS_EVERY = 100_000  # samples between progress reports


def _route(samples: Iterator[np.ndarray], writers: dict[str, _ShardWriter], valid_fraction: float,
           progress: Callable[[int], None] | None = None, hash_base: int | None = None) -> None:
    """Send sample i to the split _split_of(i) (of hash_base + i for one unit of an array build).

    A whole-stream build holds the last sample back so that it can go to "valid" when the hash
    chose none; a unit (hash_base given) does not: its neighbours may hold the valid samples.
    """
    threshold = _split_threshold(valid_fraction)
    base = hash_base or 0
    pending: np.ndarray | None = None
    index = -1
    for index, sample in enumerate(samples):
        if pending is not None:
            writers[_split_of(base + index - 1, threshold)].write(pending)
        if progress is not None and index and index % PROGRESS_EVERY == 0:
            progress(index)
        pending = sample
    if pending is not None:
        forced = hash_base is None and valid_fraction > 0 and writers["valid"].count == 0
        writers["valid" if forced else _split_of(base + index, threshold)].write(pending)


def _split_of(index: int, threshold: int) -> str:
    digest = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=8).digest()
    return "valid" if int.from_bytes(digest, "little") < threshold else "train"


def _is_dataset_file(name: str) -> bool:
    base = name[: -len(".tmp")] if name.endswith(".tmp") else name
    return base == MANIFEST_NAME or base.endswith(".tar")


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; pass a new or empty directory as the output")
    if not out.is_dir():
        return
    names = sorted(p.name for p in out.iterdir())
    foreign = [n for n in names if not _is_dataset_file(n)]
    if foreign:
        # Replacing the dataset swaps the whole directory, so these files would be lost: refuse.
        raise DataError(f"{out}: holds files that are not part of a token-shard dataset "
                        f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                        "pass a new or empty directory as the output")
    if names and not overwrite:
        raise FileExistsError(f"{out}: already holds a dataset ({', '.join(names[:3])}"
                              f"{', ...' if len(names) > 3 else ''}); pass overwrite=True (--overwrite) "
                              "to replace it")


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _move_into_place(built: Path, out: Path) -> None:
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(built, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(built, out)
    except OSError:
        os.replace(old, out)  # put the previous dataset back before reporting the failure
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_arguments(seq_len: int, samples_per_shard: int, valid_fraction: float, workers: int,
                     on_error: str) -> None:
    for name, value in (("seq_len", seq_len), ("samples_per_shard", samples_per_shard), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")


def _write_to_url(inputs: list[str], tokenizer: str, seq_len: int, url: str, overwrite: bool,
                  **options: Any) -> dict[str, Any]:
    """Build in a local scratch directory, then upload: shards first, manifest last."""
    from gigatron.data.remote import RemoteStore
    from gigatron.data.shard_tasks import publish

    if RemoteStore(url).size(MANIFEST_NAME) is not None and not overwrite:  # before hours of tokenizing
        raise FileExistsError(f"{url}: already holds a dataset (manifest.json); pass overwrite=True (--overwrite) "
                              "to replace it")
    with tempfile.TemporaryDirectory(prefix="gigatron-shard-") as scratch:
        manifest = write_text_shards(inputs, tokenizer, seq_len, Path(scratch) / "dataset", **options)
        publish(Path(scratch) / "dataset", url, overwrite)
    return manifest


def write_text_shards(inputs: list[str], tokenizer: str, seq_len: int, out: Path | str, *,
                      samples_per_shard: int = 4096, valid_fraction: float = 0.01, workers: int = 4,
                      on_error: str = "raise", overwrite: bool = False,
                      progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Tokenize the documents of `inputs` (files/globs) and write train/valid token shards to `out`.

    Each document becomes its tokens plus eos; the concatenated stream is cut into non-overlapping
    samples of seq_len + 1 ids (the remainder is dropped and counted), and each sample goes to
    "train" or "valid" by a hash of its index (see SPLIT_RULE). `tokenizer` is "bytes" or a
    sentencepiece .model path. An existing dataset in `out` is replaced only with overwrite=True.
    `out` may be a URL: the dataset is built in a local scratch directory and uploaded, manifest last.
    `progress(samples)` is called every PROGRESS_EVERY samples. A failure or interrupt removes what
    was written. Returns the manifest written to `out/manifest.json`.
    """
    _check_arguments(seq_len, samples_per_shard, valid_fraction, workers, on_error)
    if is_url(str(out)):
        return _write_to_url(inputs, tokenizer, seq_len, str(out), overwrite, samples_per_shard=samples_per_shard,
                             valid_fraction=valid_fraction, workers=workers, on_error=on_error, progress=progress)
    out = Path(out).expanduser().absolute()
    _check_destination(out, overwrite)
    tok = load_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    sample_len = seq_len + 1
    stats: dict[str, Any] = {}
    # Globs and extensions are checked here, before anything is written.
    documents = iter_documents(list(inputs), on_error=on_error, stats=stats)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(build, 0o755)  # mkdtemp makes it private; the published dataset should be readable by all
    writers = {split: _ShardWriter(build, split, samples_per_shard, sample_len, dtype) for split in SPLITS}
    counts = {"total_tokens": 0, "dropped_tokens": 0}
    try:
        try:
            _route(_samples(_token_stream(tok, documents, workers), sample_len, counts), writers, valid_fraction,
                   progress)
            for writer in writers.values():
                writer.close()
        finally:
            for writer in writers.values():
                writer.abort()
        _check_counts(writers, stats, counts, sample_len, valid_fraction)
        manifest = _manifest(tok, seq_len, dtype, valid_fraction, samples_per_shard, stats, counts, writers)
        _write_json_atomic(build / MANIFEST_NAME, manifest)
        _move_into_place(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return manifest


def _check_counts(writers: dict[str, _ShardWriter], stats: dict[str, Any], counts: dict[str, int],
                  sample_len: int, valid_fraction: float) -> None:
    total = writers["train"].count + writers["valid"].count
    skipped = f", {stats['skipped_documents']} skipped" if stats.get("skipped_documents") else ""
    if not stats.get("documents"):
        raise DataError(f"the inputs hold no documents ({stats.get('documents', 0)} read{skipped}); "
                        "nothing to shard")
    if total == 0:
        raise DataError(f"the inputs hold {counts['total_tokens']} tokens ({stats['documents']} documents"
                        f"{skipped}), fewer than one sample of seq_len + 1 = {sample_len} tokens; "
                        "add text or lower seq_len")
    if writers["train"].count == 0:
        raise DataError(f"all {total} samples went to the valid split, leaving no training samples; add text, "
                        f"lower seq_len or lower valid_fraction (now {valid_fraction})")


def _manifest(tok: Tokenizer, seq_len: int, dtype: str, valid_fraction: float, samples_per_shard: int,
              stats: dict[str, Any], counts: dict[str, int], writers: dict[str, _ShardWriter]) -> dict[str, Any]:
    return {
        "format": TEXT_FORMAT,
        "seq_len": seq_len,
        "dtype": dtype,
        "vocab_size": int(tok.vocab_size),
        "tokenizer": tokenizer_manifest_entry(tok),
        "valid_fraction": valid_fraction,
        "split_rule": SPLIT_RULE,
        "samples_per_shard": samples_per_shard,
        "sources": stats["sources"],
        "splits": {
            split: {"num_samples": writer.count, "num_tokens": writer.count * (seq_len + 1),
                    "shards": writer.shards}
            for split, writer in writers.items()
        },
        "documents": stats["documents"],
        "skipped_documents": stats["skipped_documents"],
        "skipped_examples": stats["skipped_examples"],
        "total_tokens": counts["total_tokens"],
        "dropped_tokens": counts["dropped_tokens"],
    }
