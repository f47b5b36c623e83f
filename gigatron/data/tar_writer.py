"""Rolling WebDataset tar writer shared by the text and image shard writers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import webdataset as wds

from gigatron.data.manifest import file_sha256

# Fixed tar metadata: the same inputs give byte-identical shards (and sha256s) on every run.
_TAR_MTIME = 0.0
_TAR_OWNER = "gigatron"


class RollingTarWriter:
    """Writes samples into `<prefix>-NNNNNN.tar` (prefix: the split's name unless given),
    `samples_per_shard` per file.

    Each tar is written under a `.tmp` name, fsynced and renamed when full (or on `close`), so a
    crash never leaves a half-written file under a final name. `shards` lists
    {file, samples, bytes, sha256} for the manifest.
    """

    def __init__(self, directory: Path, split: str, samples_per_shard: int, prefix: str | None = None) -> None:
        self.directory, self.split, self.samples_per_shard = directory, split, samples_per_shard
        self.prefix = prefix or split
        self.shards: list[dict[str, Any]] = []
        self.count = 0
        self._in_shard = 0
        self._handle: Any = None
        self._tar: wds.TarWriter | None = None

    def write(self, sample: dict[str, Any]) -> None:
        """One sample: {"__key__": key, "<ext>": bytes, ...} (already encoded)."""
        if self._tar is None:
            name = f"{self.prefix}-{len(self.shards):06d}.tar"
            # Stays open across write() calls until the shard is full; close()/abort() release it.
            self._handle = open(self.directory / f"{name}.tmp", "wb")  # noqa: SIM115
            self._tar = wds.TarWriter(self._handle, encoder=False, mtime=_TAR_MTIME, user=_TAR_OWNER,
                                      group=_TAR_OWNER)
            self.shards.append({"file": name, "samples": 0, "bytes": 0, "sha256": ""})
        self._tar.write(sample)
        self.count += 1
        self._in_shard += 1
        if self._in_shard == self.samples_per_shard:
            self.close()

    def close(self) -> None:
        """Finish the open shard (if any): flush, fsync, rename, record size and sha256."""
        if self._tar is None:
            return
        self._tar.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        entry = self.shards[-1]
        final = self.directory / entry["file"]
        os.replace(self.directory / f"{entry['file']}.tmp", final)
        entry.update(samples=self._in_shard, bytes=final.stat().st_size, sha256=file_sha256(final))
        self._tar, self._handle, self._in_shard = None, None, 0

    def abort(self) -> None:
        """Close file handles after a failure; the build directory is deleted by the caller."""
        if self._handle is not None:
            self._handle.close()
        self._tar, self._handle = None, None
