"""A node-local cache of a remote dataset's shards: one download per node, verified, bounded in size.

Layout under the cache directory (one per dataset URL):

    url.txt                 the dataset's URL, for people
    <shard>.tar             a verified copy of the shard
    <shard>.tar.ok          the manifest sha256 it was verified against (written after the rename)
    <shard>.tar.lock        flock(2) target: exclusive while downloading or evicting, shared while in use
    .<shard>.tar.<pid>.part a download in progress

All ranks of a node (and their DataLoader workers) share the directory. The first process to need
a shard downloads it under the exclusive lock; the others wait for the lock and then use the file.
A shard is used only when its `.ok` names the manifest's current sha256, so files left by a killed
or requeued job are reused when complete and verified and downloaded again otherwise.

Before a download, shards are evicted least recently used first (a use touches the file's mtime)
until the new one fits `limit` bytes; a shard some process holds (a shared lock) is never evicted.
When everything left is in use the cache goes over its limit, by at most the shards in flight,
and says so once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gigatron.data.errors import RemoteDataError
from gigatron.data.manifest import ShardInfo, file_sha256
from gigatron.data.remote import RemoteStore, SharedCounter

_OK = ".ok"
_LOCK = ".lock"
_PART = ".part"
_TOUCH_EVERY_S = 5.0
_WARN_WAIT_S = 120.0


def cache_dir_for(root: Path, url: str) -> Path:
    """The cache directory of the dataset at `url` under the cache root `root`."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    tail = url.rstrip("/").rsplit("/", 1)[-1] or "dataset"
    return root / "remote" / f"{tail}-{digest}"


class ShardCache:
    """Local copies of a remote dataset's shards, fetched on demand or ahead of use."""

    def __init__(self, store: RemoteStore, directory: Path, limit: int | None, checksum: bool,
                 log: Callable[[str], None] | None = None) -> None:
        self.store, self.directory, self.limit, self.checksum = store, Path(directory), limit, checksum
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.directory.mkdir(parents=True, exist_ok=True)
        url_file = self.directory / "url.txt"
        if not url_file.exists():
            url_file.write_text(store.url + "\n")
        self._pins: dict[str, tuple[int, int]] = {}  # file -> (lock descriptor, holders in this process)
        # file -> (inode, size) this process saw verified, and when it last marked it used: a copy
        # held again is checked with one stat, not by reading its .ok.
        self._seen: dict[str, tuple[int, int]] = {}
        self._touched: dict[str, float] = {}
        self._mutex_pid = -1
        self._warned_over = False
        self.downloads = SharedCounter()
        self.evictions = SharedCounter()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pins"], state["_mutex_pid"], state["log"] = {}, -1, None
        state["_seen"], state["_touched"] = {}, {}
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.log = lambda text: print(text, file=sys.stderr, flush=True)

    @property
    def _mutex(self) -> threading.Lock:
        # One per process: a DataLoader worker forked while the prefetch thread held the parent's
        # lock would otherwise inherit it locked forever.
        if self._mutex_pid != os.getpid():
            self._lock = threading.Lock()
            self._mutex_pid = os.getpid()
        return self._lock

    def local_path(self, shard: ShardInfo) -> Path:
        """Where the verified copy of `shard` lives (whether or not it is there now)."""
        return self.directory / shard.path.name

    # ------------------------------------------------------------ use

    def acquire(self, shard: ShardInfo) -> Path:
        """The local copy of `shard`, downloaded and verified if needed, held until `release`."""
        name = shard.path.name
        with self._mutex:
            held = self._pins.get(name)
            if held is not None:
                self._pins[name] = (held[0], held[1] + 1)
                return self.local_path(shard)
        fd = os.open(self.directory / (name + _LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if self._is_valid(shard):
                    break
                # Upgrade to download (not atomic: someone else may have downloaded meanwhile).
                self._lock_exclusive(fd, name)
                if not self._is_valid(shard):
                    self._download(shard)
                # Downgrade, then check again: an evictor may slip in between the two locks.
                fcntl.flock(fd, fcntl.LOCK_SH)
                if self._is_valid(shard):
                    break
            now = time.monotonic()
            if now - self._touched.get(name, -_TOUCH_EVERY_S) >= _TOUCH_EVERY_S:
                os.utime(self.local_path(shard))  # most recently used (to within _TOUCH_EVERY_S)
                self._touched[name] = now
        except BaseException:
            os.close(fd)
            raise
        with self._mutex:
            held = self._pins.get(name)
            if held is not None:  # another thread of this process got there first
                os.close(fd)
                self._pins[name] = (held[0], held[1] + 1)
            else:
                self._pins[name] = (fd, 1)
        return self.local_path(shard)

    def _lock_exclusive(self, fd: int, name: str) -> None:
        """Wait for the exclusive lock, saying so when it takes long (rather than hang in silence)."""
        waited_since = time.monotonic()
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not warned and time.monotonic() - waited_since > _WARN_WAIT_S:
                    warned = True
                    self.log(f"[data] {self.directory / name}: waited {_WARN_WAIT_S:.0f} s to replace it; another "
                             "process of this node is downloading it, or holds a copy that no longer matches the "
                             "manifest (was the dataset rewritten under the same URL?)")
                time.sleep(0.05)

    def release(self, shard: ShardInfo) -> None:
        """Stop holding `shard` (it may be evicted from now on)."""
        name = shard.path.name
        with self._mutex:
            held = self._pins.get(name)
            if held is None:
                return
            if held[1] > 1:
                self._pins[name] = (held[0], held[1] - 1)
                return
            del self._pins[name]
        os.close(held[0])  # drops this process's shared lock

    def fetch(self, shard: ShardInfo) -> None:
        """Make sure `shard` is in the cache (download ahead of use)."""
        self.acquire(shard)
        self.release(shard)

    # ------------------------------------------------------------ state on disk

    def _is_valid(self, shard: ShardInfo) -> bool:
        path = self.local_path(shard)
        try:
            stat = path.stat()
            if stat.st_size != shard.bytes:
                return False
            if self._seen.get(path.name) == (stat.st_ino, stat.st_size):
                return True
            if (self.directory / (path.name + _OK)).read_text().strip() != shard.sha256:
                return False
        except FileNotFoundError:
            return False
        self._seen[path.name] = (stat.st_ino, stat.st_size)
        return True

    def _download(self, shard: ShardInfo) -> None:
        """Fetch, verify and publish `shard`; called under its exclusive lock."""
        name = shard.path.name
        url = self.store.locate(name)
        final = self.local_path(shard)
        (self.directory / (name + _OK)).unlink(missing_ok=True)
        self._make_room(shard.bytes, keep=name)
        part = self.directory / f".{name}.{os.getpid()}{_PART}"
        try:
            problem = None
            for _attempt in range(2):  # a second try tells a damaged transfer from a damaged shard
                self.store.download(name, part)
                problem = self._verify(part, shard)
                if problem is None:
                    break
                self.store.retries.add()
            if problem is not None:
                raise RemoteDataError(f"{url}: {problem} (downloaded twice); the shard on the server differs from the "
                                f"one its manifest describes: rewrite the dataset or restore the shard")
            os.replace(part, final)
        finally:
            part.unlink(missing_ok=True)
        (self.directory / (name + _OK)).write_text(shard.sha256 + "\n")
        self.downloads.add()

    def _verify(self, path: Path, shard: ShardInfo) -> str | None:
        size = path.stat().st_size
        if size != shard.bytes:
            return f"has {size} bytes, the manifest says {shard.bytes}"
        if self.checksum and file_sha256(path) != shard.sha256:
            return "fails its sha256 check against the manifest"
        return None

    def _cached(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every complete shard file in the cache."""
        out = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith((_OK, _LOCK, _PART)) or entry.name.startswith(".") or entry.name == "url.txt":
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            out.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        return out

    def _remove_stale_parts(self) -> None:
        for entry in os.scandir(self.directory):
            if not entry.name.endswith(_PART):
                continue
            try:
                pid = int(entry.name[: -len(_PART)].rsplit(".", 1)[1])
                os.kill(pid, 0)
            except ProcessLookupError:  # its downloader died (the cache is node-local, so pids are ours)
                Path(entry.path).unlink(missing_ok=True)
            except (ValueError, IndexError, PermissionError):
                continue

    def _make_room(self, need: int, keep: str) -> None:
        if self.limit is None:
            return
        self._remove_stale_parts()
        cached = sorted(self._cached())
        total = sum(size for _, size, _ in cached)
        for _, size, path in cached:
            if total + need <= self.limit:
                return
            if path.name == keep:
                continue
            if self._evict(path):
                total -= size
        if total + need > self.limit and not self._warned_over:
            self._warned_over = True
            self.log(f"[data] shard cache {self.directory} goes over data.cache_limit ({self.limit} bytes) to "
                     f"{total + need} bytes: every other shard is in use; raise the limit for fewer downloads")

    def _evict(self, path: Path) -> bool:
        """Delete a shard unless some process holds it; True when it was deleted."""
        fd = os.open(self.directory / (path.name + _LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            (self.directory / (path.name + _OK)).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            self.evictions.add()
            return True
        finally:
            os.close(fd)
