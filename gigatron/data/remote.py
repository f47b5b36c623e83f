"""Datasets addressed by URL: `https://`, `s3://`, `gs://`, `file://` and anything else fsspec opens.

The transports are fsspec's (its HTTP filesystem on aiohttp, s3fs, gcsfs); this module adds what a
training run needs around them: retries with exponential backoff for transient failures
(connection resets, timeouts, 5xx, 408/429), a count of those retries shared by a rank and its
DataLoader workers, and errors that name the URL. A failure that retrying cannot fix (404, 403,
retries exhausted) raises `RemoteDataError`.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gigatron.data.errors import RemoteDataError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Not worth retrying: the same request would fail the same way.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# Exceptions of the transports' own types; their transient cases carry no common base class.
_TRANSPORT_MODULES = ("aiohttp", "botocore", "aiobotocore", "urllib3", "requests", "google", "gcsfs", "s3fs")

T = TypeVar("T")


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for `scheme://...` strings (a dataset to read through fsspec), False for local paths."""
    return isinstance(path, str) and bool(_URL.match(path))


def join_url(root: str, name: str) -> str:
    """`root/name` with exactly one slash between them."""
    return f"{root.rstrip('/')}/{name.lstrip('/')}"


def is_transient(exc: BaseException) -> bool:
    """Would the same request plausibly succeed if tried again?"""
    if isinstance(exc, _PERMANENT):
        return False
    status = getattr(exc, "status", None)
    if status is None:
        status = getattr(exc, "code", None)
    if isinstance(status, int) and 100 <= status < 600:
        return status >= 500 or status in (408, 429)
    if isinstance(exc, (OSError, TimeoutError, ConnectionError, EOFError)):
        return True
    return type(exc).__module__.split(".")[0] in _TRANSPORT_MODULES


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all; waits of `backoff_s` × 2^k (jittered, at most `max_wait_s`) between them."""

    attempts: int = 8
    backoff_s: float = 1.0
    max_wait_s: float = 30.0

    def wait(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based): jittered so ranks do not retry in step."""
        return min(self.max_wait_s, self.backoff_s * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)


class SharedCounter:
    """A count shared by a rank and its forked DataLoader workers (retries, downloads)."""

    def __init__(self) -> None:
        self._value = multiprocessing.Value("q", 0)

    def add(self, n: int = 1) -> None:
        """Count `n` more."""
        with self._value.get_lock():
            self._value.value += n

    @property
    def value(self) -> int:
        """The count so far."""
        return int(self._value.value)


class RemoteStore:
    """One dataset directory behind a URL: read, download and write its files, with retries.

    The fsspec filesystem is created lazily in each process (DataLoader workers are forked, and an
    async transport's event loop does not survive a fork).
    """

    def __init__(self, url: str, retry: RetryPolicy | None = None, retries: SharedCounter | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if not is_url(url):
            raise ValueError(f"{url!r} is not a URL (scheme://...)")
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.retries = retries or SharedCounter()
        self.log = log
        self._fs: Any = None
        self._root = ""
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fs"], state["_pid"], state["log"] = None, None, None
        return state

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None or self._pid != os.getpid():
            try:
                import fsspec
            except ImportError as exc:  # pragma: no cover - fsspec is a dependency
                raise ImportError("reading datasets by URL needs fsspec: pip install 'fsspec[http]'") from exc
            try:
                self._fs, self._root = fsspec.core.url_to_fs(self.url)
            except (ImportError, ValueError) as exc:
                scheme = self.url.split("://", 1)[0]
                extra = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}
                hint = f"; install {extra[scheme]}" if scheme in extra else ""
                raise ImportError(f"{self.url}: fsspec cannot open {scheme}:// URLs ({exc}){hint}") from exc
            self._pid = os.getpid()
        return self._fs, self._root

    def locate(self, name: str) -> str:
        """The URL of `name` in this directory."""
        return join_url(self.url, name)

    def _path(self, name: str) -> str:
        _, root = self._filesystem()
        return join_url(root, name) if root else name

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()` with retries of transient errors; `what` names the URL in messages."""
        started = time.monotonic()
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return fn()
            except _PERMANENT as exc:
                raise RemoteDataError(f"{what}: {type(exc).__name__}: {exc}") from exc
            except Exception as exc:
                if not is_transient(exc):
                    raise RemoteDataError(f"{what}: {type(exc).__name__}: {exc}") from exc
                if attempt == self.retry.attempts:
                    raise RemoteDataError(f"{what}: still failing after {attempt} attempts over "
                                    f"{time.monotonic() - started:.0f} s (last error: {type(exc).__name__}: "
                                    f"{exc}); is the store reachable? data.retries sets the attempts") from exc
                self.retries.add()
                wait = self.retry.wait(attempt)
                if self.log is not None:
                    self.log(f"[data] {what}: {type(exc).__name__}: {exc}; retry {attempt} in {wait:.1f} s")
                time.sleep(wait)
        raise AssertionError("unreachable")

    def read_bytes(self, name: str) -> bytes:
        """The whole of file `name`."""
        return self.call(self.locate(name), lambda: self._filesystem()[0].cat_file(self._path(name)))

    def download(self, name: str, dest: Path) -> None:
        """Copy file `name` to the local path `dest` (streamed; a failed try starts over)."""
        def get() -> None:
            self._filesystem()[0].get_file(self._path(name), str(dest))

        self.call(self.locate(name), get)

    def size(self, name: str) -> int | None:
        """Size of file `name`, or None if it does not exist."""
        def info() -> int | None:
            try:
                return int(self._filesystem()[0].info(self._path(name))["size"])
            except FileNotFoundError:
                return None

        return self.call(self.locate(name), info)

    def upload(self, source: Path, name: str) -> None:
        """Write the local file `source` as `name` in this directory."""
        def put() -> None:
            fs, _ = self._filesystem()
            fs.put_file(str(source), self._path(name))

        self.call(self.locate(name), put)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write `data` as file `name` (one object: atomic on object stores)."""
        self.call(self.locate(name), lambda: self._filesystem()[0].pipe_file(self._path(name), data))

    def remove(self, prefix: str) -> None:
        """Delete `prefix` of this directory and everything under it."""
        self.call(self.locate(prefix), lambda: self._filesystem()[0].rm(self._path(prefix), recursive=True))

    def list(self, prefix: str = "") -> list[str]:
        """Names of the files directly under `prefix` of this directory (empty when it is missing)."""
        def ls() -> list[str]:
            fs, _ = self._filesystem()
            try:
                entries = fs.ls(self._path(prefix), detail=False)
            except FileNotFoundError:
                return []
            return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

        return self.call(self.locate(prefix), ls)
