"""Read documents (plain strings) out of .txt, .jsonl and .parquet files, checking they are UTF-8.

Bad data raises `DataError` naming the file (and line or row) and what is wrong; with
on_error="skip" the offending document is left out and counted instead. A file that cannot be
read at all (unsupported extension, missing `text` column) always raises: skipping a whole file
silently would hide a configuration mistake.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gigatron.data.errors import DataError

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".parquet")
ON_ERROR = ("raise", "skip")
TEXT_FIELD = "text"
_MAX_SKIPPED_EXAMPLES = 10
_CHUNK = 1 << 22


def expand_patterns(patterns: list[str]) -> list[Path]:
    """Expand globs in the given order (matches of one pattern sorted); each must match a file."""
    if not patterns:
        raise ValueError("no inputs given; pass at least one file or glob")
    files: list[Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(str(pattern))
        # sorted: glob order depends on the filesystem, and the token stream must be reproducible.
        matches = sorted(m for m in glob.glob(expanded, recursive=True) if os.path.isfile(m))
        if not matches:
            hint = f" ({pattern} is a directory: use {os.path.join(pattern, '*.txt')})" if os.path.isdir(
                expanded) else ""
            raise FileNotFoundError(f"input pattern {pattern!r} matches no files{hint}")
        files.extend(Path(m) for m in matches)
    return files


def check_suffixes(files: list[Path]) -> None:
    """Raise DataError naming the first file whose extension is not supported."""
    for path in files:
        if path.suffix not in SUPPORTED_SUFFIXES:
            raise DataError(f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; "
                            f"supported: {', '.join(SUPPORTED_SUFFIXES)}")


def _utf8_error(where: str, offset: int, exc: UnicodeDecodeError) -> DataError:
    return DataError(f"{where}: not valid UTF-8 at byte offset {offset} ({exc.reason}); "
                     "convert the file to UTF-8 or pass on_error=skip")


def check_utf8_file(path: Path) -> None:
    """Raise DataError naming `path` and the byte offset of the first invalid UTF-8 sequence."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    fed = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            # The decoder holds back an incomplete trailing sequence; error offsets count from it.
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise _utf8_error(str(path), fed - pending + exc.start, exc) from None
            fed += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise _utf8_error(str(path), fed - len(decoder.getstate()[0]) + exc.start, exc) from None


class _Counter:
    """Applies on_error to one bad document and keeps the stats dict up to date."""

    def __init__(self, on_error: str, stats: dict[str, Any]) -> None:
        self.skip = on_error == "skip"
        self.stats = stats
        stats.setdefault("documents", 0)
        stats.setdefault("skipped_documents", 0)
        stats.setdefault("skipped_examples", [])
        stats.setdefault("sources", [])

    def bad(self, error: DataError) -> None:
        if not self.skip:
            raise error
        self.stats["skipped_documents"] += 1
        if len(self.stats["skipped_examples"]) < _MAX_SKIPPED_EXAMPLES:
            self.stats["skipped_examples"].append(str(error))

    def good(self) -> None:
        self.stats["documents"] += 1

    def source(self, path: Path, size: int, sha256: str) -> None:
        self.stats["sources"].append({"path": str(path.absolute()), "bytes": size, "sha256": sha256})


def _encodable(text: str, where: str) -> DataError | None:
    # JSON escapes can produce lone surrogates ("\ud800"), which no tokenizer can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return DataError(f"{where}: text holds an unpaired surrogate {text[exc.start]!r} at character "
                         f"{exc.start}, which is not valid Unicode")
    return None


def _txt(path: Path, counter: _Counter) -> Iterator[str]:
    data = path.read_bytes()
    counter.source(path, len(data), hashlib.sha256(data).hexdigest())
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        counter.bad(_utf8_error(str(path), exc.start, exc))
        return
    counter.good()
    yield text


def _jsonl(path: Path, counter: _Counter) -> Iterator[str]:
    digest = hashlib.sha256()
    offset = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            digest.update(line)
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                counter.bad(_utf8_error(where, start + exc.start, exc))
                continue
            try:
                record = json.loads(decoded)
            except ValueError as exc:
                counter.bad(DataError(f"{where}: not valid JSON ({exc}); each line must be one JSON object "
                                      f'like {{"{TEXT_FIELD}": "..."}}'))
                continue
            text = record.get(TEXT_FIELD) if isinstance(record, dict) else None
            if not isinstance(text, str):
                got = (f"a {type(record).__name__}" if not isinstance(record, dict) else
                       f"no '{TEXT_FIELD}' field" if TEXT_FIELD not in record else
                       f"'{TEXT_FIELD}' = {text!r:.60}")
                counter.bad(DataError(f"{where}: expected a JSON object with a string field "
                                      f"'{TEXT_FIELD}', got {got}"))
                continue
            if "\\u" in decoded and (error := _encodable(text, where)):
                counter.bad(error)
                continue
            counter.good()
            yield text
    counter.source(path, offset, digest.hexdigest())


def _parquet(path: Path, counter: _Counter) -> Iterator[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ModuleNotFoundError(f"{path}: reading .parquet files needs pyarrow; run `pip install pyarrow` "
                                  "(or install gigatron with the dev extra)", name="pyarrow") from exc
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    schema = parquet.schema_arrow
    if TEXT_FIELD not in schema.names:
        raise DataError(f"{path}: no '{TEXT_FIELD}' column; columns are: {', '.join(schema.names)}")
    kind = schema.field(TEXT_FIELD).type
    textual = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if not (textual or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise DataError(f"{path}: column '{TEXT_FIELD}' has type {kind}; expected string (or UTF-8 binary)")
    counter.source(path, path.stat().st_size, _file_sha256(path))
    row = 0
    for batch in parquet.iter_batches(columns=[TEXT_FIELD]):
        column = batch.column(0)
        # Read raw bytes so invalid UTF-8 is reported per row instead of failing the whole batch.
        values = column.cast(pa.large_binary()).to_pylist() if textual else column.to_pylist()
        for value in values:
            where = f"{path}: row {row}"
            row += 1
            if value is None:
                counter.bad(DataError(f"{where}: '{TEXT_FIELD}' is null; expected a string"))
                continue
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                counter.bad(_utf8_error(where, exc.start, exc))
                continue
            counter.good()
            yield text


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


_READERS = {".txt": _txt, ".jsonl": _jsonl, ".parquet": _parquet}


def iter_documents(patterns: list[str], on_error: str = "raise",
                   stats: dict[str, Any] | None = None) -> Iterator[tuple[str, str]]:
    """Yield (source path, text) for every document of the files matched by `patterns`, in order.

    `.txt`: the whole file is one document. `.jsonl`: one JSON object per line with a string
    field "text" (blank lines ignored). `.parquet`: the "text" column, one document per row.
    Patterns and extensions are checked when this is called, before any file is read.
    `stats` (if given) receives "documents", "skipped_documents", "skipped_examples" (the first
    few skip messages) and "sources" ([{"path", "bytes", "sha256"}] per file read).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    files = expand_patterns(patterns)
    # Check every extension up front: failing on file 900 after an hour of work helps nobody.
    check_suffixes(files)
    return _iterate(files, _Counter(on_error, stats if stats is not None else {}))


def _iterate(files: list[Path], counter: _Counter) -> Iterator[tuple[str, str]]:
    for path in files:
        for text in _READERS[path.suffix](path, counter):
            yield str(path), text
