"""The default image dataset: the synthetic captioned-shapes set (`shapes.py`) as image shards.

Built once per size under the gigatron cache (`datasets/shapes-{N}/`), with the same locking and
atomic publication as the default text dataset, so every rank of a job may ask for it at once.
"""

from __future__ import annotations

from pathlib import Path

from gigatron.data.corpus import resolve_cache_dir
from gigatron.data.default_dataset import build_dataset_once

SHAPES_SEED = 0
SAMPLES_PER_SHARD = 1000


def default_images_dir(cache_dir: str | None = None, count: int = 2000, max_shapes: int = 3) -> Path:
    """Where `ensure_default_images` puts (or finds) the shapes set of `count` images."""
    suffix = "" if max_shapes == 3 else f"-max{max_shapes}"
    return resolve_cache_dir(cache_dir) / "datasets" / f"shapes-{count}{suffix}"


def ensure_default_images(cache_dir: str | None = None, count: int = 2000, max_shapes: int = 3) -> Path:
    """The directory of the shapes image-shard dataset of `count` images (at most `max_shapes` shapes
    each), built on first use."""
    from gigatron.data.image_shards import write_image_shards
    from gigatron.data.shapes import generate_shapes

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the default image set needs a positive number of images, got {count!r}")

    def build(out: Path) -> None:
        captions = generate_shapes(out.with_name("images"), count, seed=SHAPES_SEED, max_shapes=max_shapes)
        write_image_shards(str(captions), out, samples_per_shard=SAMPLES_PER_SHARD)

    return build_dataset_once(default_images_dir(cache_dir, count, max_shapes), build)


def run_image_root(data, images) -> Path:
    """The first image dataset of a run's `data` and `images` config, found without building anything
    (tools that read a finished run's captions or tokenizer must not start a build)."""
    if data.source == "default":
        return default_images_dir(data.cache_dir, images.default_images, images.default_max_shapes)
    return Path(data.datasets[0].path)
