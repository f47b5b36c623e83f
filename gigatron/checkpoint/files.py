"""Checkpoint directory bookkeeping that needs no process group: tags, manifests, the `latest` pointer.

Layout of `<dir>`:
    latest                  text file naming the newest complete tag (moved atomically, last)
    step_00000010/          one tag: DeepSpeed's files, rng/, trainer_state.json, config.yaml,
        manifest.json       sizes and sha256 of every other file, written after all ranks finished
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from gigatron.data.manifest import file_sha256

LATEST = "latest"
MANIFEST = "manifest.json"
_TAG_RE = re.compile(r"^step_(\d{8,})$")


def tag_for_step(step: int) -> str:
    """The directory name of the checkpoint taken after `step` optimizer steps."""
    return f"step_{step:08d}"


def step_of_tag(tag: str) -> int | None:
    """The step number in a tag name, or None if it is not a checkpoint tag."""
    match = _TAG_RE.match(tag)
    return int(match.group(1)) if match else None


def list_tags(ckpt_dir: Path) -> list[str]:
    """Checkpoint tags in `ckpt_dir`, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if p.is_dir() and step_of_tag(p.name) is not None]
    return sorted(tags, key=lambda t: step_of_tag(t) or 0)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file, fsync and rename, so readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_manifest(tag_dir: Path) -> dict:
    """Record size and sha256 of every file in `tag_dir` (except the manifest) in manifest.json."""
    files = {}
    for path in sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(tag_dir).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    manifest = {"format": 1, "files": files}
    atomic_write_text(tag_dir / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def verify_manifest(tag_dir: Path, checksums: bool = True) -> str | None:
    """None if every file in the manifest is present with its size and (with `checksums`) its
    sha256, else the reason, naming the file."""
    manifest_path = tag_dir / MANIFEST
    if not manifest_path.is_file():
        return f"{manifest_path} is missing (the save did not finish)"
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError) as exc:
        return f"{manifest_path} is unreadable ({exc})"
    for rel, meta in files.items():
        path = tag_dir / rel
        if not path.is_file():
            return f"{path} listed in the manifest is missing"
        size = path.stat().st_size
        if size != meta["size"]:
            return f"{path} has {size} bytes, the manifest says {meta['size']}"
    if checksums:  # sizes first: a truncated copy is named without hashing gigabytes
        for rel, meta in files.items():
            if file_sha256(tag_dir / rel) != meta["sha256"]:
                return f"{tag_dir / rel} fails its sha256 check (changed since it was saved)"
    return None


class DamagedCheckpoint(ValueError):
    """A checkpoint's files do not match its manifest; the message names the file."""


SKIP_CHECKSUMS_HINT = ("restore the file or use another checkpoint; --skip-checksums (commands) or "
                       "checkpoint.verify_checksums=false (pretrain) read it anyway, checking sizes only")


def require_intact(tag_dir: Path, checksums: bool = True) -> None:
    """Raise DamagedCheckpoint unless `tag_dir` matches its manifest (docs/checkpoints.md)."""
    problem = verify_manifest(tag_dir, checksums)
    if problem is not None:
        raise DamagedCheckpoint(f"checkpoint {tag_dir} is damaged: {problem}; {SKIP_CHECKSUMS_HINT}")


def read_latest(ckpt_dir: Path) -> str | None:
    """The tag named by `latest`, or None."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    return pointer.read_text().strip() or None


def choose_resume_tag(ckpt_dir: Path, log=print, checksums: bool = True) -> str | None:
    """The newest checkpoint that passes its manifest, starting from `latest`.

    Tags newer than `latest` are unfinished saves and are never used. A tag that fails its
    manifest is reported and the previous one tried. Raises if checkpoints exist but none is
    intact: silently starting from scratch would throw a run's progress away.
    """
    latest = read_latest(ckpt_dir)
    if latest is None:
        return None
    latest_step = step_of_tag(latest)
    if latest_step is None:
        raise RuntimeError(f"{ckpt_dir / LATEST} names {latest!r}, which is not a checkpoint tag (step_NNNNNNNN)")
    candidates = [t for t in reversed(list_tags(ckpt_dir)) if (step_of_tag(t) or 0) <= latest_step]
    for tag in candidates:
        problem = verify_manifest(ckpt_dir / tag, checksums)
        if problem is None:
            return tag
        log(f"[checkpoint] skipping {ckpt_dir / tag}: {problem}; trying the previous checkpoint")
    raise RuntimeError(f"no intact checkpoint in {ckpt_dir}: every tag up to {latest} failed its manifest "
                       "(see messages above); move the directory away to start from scratch")


def prune(ckpt_dir: Path, keep_last: int, current: str) -> list[str]:
    """Delete complete checkpoints beyond the newest `keep_last`, and stale unfinished ones.

    Never deletes `current`. Returns the removed tags.
    """
    tags = list_tags(ckpt_dir)
    current_step = step_of_tag(current) or 0
    complete = [t for t in tags if (ckpt_dir / t / MANIFEST).is_file()]
    keep = set(complete[-keep_last:]) | {current}
    removed = []
    for tag in tags:
        unfinished_and_old = tag not in complete and (step_of_tag(tag) or 0) < current_step
        if tag not in keep and (tag in complete or unfinished_and_old):
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
            removed.append(tag)
    return removed
