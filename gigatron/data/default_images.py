"""The default image dataset: the synthetic captioned-shapes set (`shapes.py`) as image shards.

Built once per size under the gigatron cache (`datasets/shapes-{N}/`), with the same locking and
atomic publication as the default text dataset, so every rank of a job may ask for it at once.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from gigatron.data.corpus import resolve_cache_dir
from gigatron.data.default_dataset import build_lock, publish_dataset
from gigatron.data.manifest import MANIFEST_NAME

SHAPES_SEED = 0
SAMPLES_PER_SHARD = 1000


def default_images_dir(cache_dir: str | None = None, count: int = 2000) -> Path:
    """Where `ensure_default_images` puts (or finds) the shapes set of `count` images."""
    return resolve_cache_dir(cache_dir) / "datasets" / f"shapes-{count}"


def ensure_default_images(cache_dir: str | None = None, count: int = 2000) -> Path:
    """The directory of the shapes image-shard dataset of `count` images, built on first use."""
    from gigatron.data.image_shards import write_image_shards
    from gigatron.data.shapes import generate_shapes

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the default image set needs a positive number of images, got {count!r}")
    target = default_images_dir(cache_dir, count)
    if (target / MANIFEST_NAME).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(target.parent / f".{target.name}.lock"):
        if (target / MANIFEST_NAME).is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            captions = generate_shapes(staging / "images", count, seed=SHAPES_SEED)
            write_image_shards(str(captions), staging / "dataset", samples_per_shard=SAMPLES_PER_SHARD)
            publish_dataset(staging / "dataset", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
