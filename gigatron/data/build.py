"""From the `data` config section to the sample sources the trainer reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gigatron.config.errors import ConfigError
from gigatron.config.schema import DataConfig, ImagesConfig
from gigatron.config.units import parse_byte_size
from gigatron.data.loader import SampleSource
from gigatron.data.manifest import TextDataset, load_text_dataset
from gigatron.data.remote import RemoteStore, RetryPolicy, is_url
from gigatron.data.shard_cache import ShardCache, cache_dir_for
from gigatron.data.token_source import TokenShardSource


@dataclass
class TrainingData:
    """Train and validation sources (one per dataset), their blend weights, and tokenizer facts
    (image data has no vocabulary and an empty fingerprint)."""

    train: list[SampleSource]
    train_weights: list[float]
    valid: list[SampleSource]
    valid_weights: list[float]
    vocab_size: int | None
    tokenizer_fingerprint: str
    roots: list[Path | str]


def dataset_roots(cfg: DataConfig, images: ImagesConfig | None = None) -> tuple[list[Path | str], list[float]]:
    """Dataset directories (or URLs) and weights; builds the default dataset on first use (the shapes
    image set of `images` for image models, Shakespeare tokens otherwise)."""
    if cfg.source == "default" and images is not None:
        from gigatron.data.default_images import ensure_default_images

        return [ensure_default_images(cfg.cache_dir, images.default_images, images.default_max_shapes)], [1.0]
    if cfg.source == "default":
        from gigatron.data.default_dataset import ensure_default_dataset

        return [ensure_default_dataset(cfg.cache_dir, cfg.seq_len, cfg.default_vocab_size)], [1.0]
    return [d.path if is_url(d.path) else Path(d.path) for d in cfg.datasets], [d.weight for d in cfg.datasets]


def shard_cache(cfg: DataConfig, url: str) -> ShardCache:
    """The node-local cache of the dataset at `url`, as the `data` section configures it."""
    from gigatron.data.corpus import resolve_cache_dir

    store = RemoteStore(url, RetryPolicy(cfg.retries, cfg.retry_backoff_s))
    limit = None if cfg.cache_limit is None else parse_byte_size(cfg.cache_limit, "data.cache_limit")
    return ShardCache(store, cache_dir_for(resolve_cache_dir(cfg.cache_dir), url), limit,
                      checksum=cfg.verify != "size")


def _check_consistent(cfg: DataConfig, datasets: list[TextDataset]) -> None:
    for ds in datasets:
        if ds.seq_len != cfg.seq_len:
            raise ConfigError(f"data.seq_len={cfg.seq_len} but {ds.root}/manifest.json was written with "
                             f"seq_len={ds.seq_len}; set data.seq_len={ds.seq_len} or reshard")
        if ds.fingerprint != datasets[0].fingerprint:
            raise ConfigError(f"{ds.root} was tokenized with {ds.fingerprint} but {datasets[0].root} with "
                             f"{datasets[0].fingerprint}; blended datasets must share one tokenizer")
    if cfg.tokenizer is not None:
        from gigatron.data.sp_tokenizer import load_tokenizer

        fingerprint = load_tokenizer(cfg.tokenizer).fingerprint
        if fingerprint != datasets[0].fingerprint:
            raise ConfigError(f"data.tokenizer={cfg.tokenizer!r} has fingerprint {fingerprint} but the shards in "
                             f"{datasets[0].root} were written with {datasets[0].fingerprint}")


def build_lm_data(cfg: DataConfig) -> TrainingData:
    """Load and check the manifests, then open every split's shards."""
    roots, weights = dataset_roots(cfg)
    datasets = [load_text_dataset(root) for root in roots]
    _check_consistent(cfg, datasets)
    caches = {str(ds.root): shard_cache(cfg, str(ds.root)) for ds in datasets if is_url(str(ds.root))}
    train = [TokenShardSource(ds, "train", cfg.verify, caches.get(str(ds.root))) for ds in datasets]
    with_valid = [(ds, w) for ds, w in zip(datasets, weights, strict=True) if ds.num_samples("valid") > 0]
    valid = [TokenShardSource(ds, "valid", cfg.verify, caches.get(str(ds.root))) for ds, _ in with_valid]
    return TrainingData(
        train=train, train_weights=weights, valid=valid, valid_weights=[w for _, w in with_valid],
        vocab_size=max(ds.vocab_size for ds in datasets), tokenizer_fingerprint=datasets[0].fingerprint,
        roots=roots,
    )


def build_image_data(cfg: DataConfig, images: ImagesConfig, captions: bool = False) -> TrainingData:
    """Open image-shard datasets: the first samples of each train, its last `images.valid_images` validation.

    With `captions`, samples carry caption token ids (the tokenizer of `caption_tokenizer`) and the
    data's vocabulary and tokenizer fingerprint are the tokenizer's.
    """
    from gigatron.data.image_pipeline import AspectBuckets
    from gigatron.data.image_shards import load_image_dataset
    from gigatron.data.image_source import ImageShardSource

    roots, weights = dataset_roots(cfg, images)
    remote = [str(root) for root in roots if is_url(str(root))]
    if remote:
        raise ConfigError(f"data.datasets: {remote[0]} is a URL; image datasets are read from disk only "
                          "(copy them to a shared or local path first)")
    tokenizer = None
    if captions:
        from gigatron.data.caption_tokenizer import caption_tokenizer

        tokenizer = caption_tokenizer(cfg, images, roots[0])
    buckets = (AspectBuckets(images.image_size, images.bucket_multiple, images.max_aspect_ratio)
               if images.aspect_buckets else None)
    options = {"tokenizer": tokenizer, "caption_len": images.caption_len, "buckets": buckets, "latents": images.latents}
    train, valid = [], []
    for root in roots:
        dataset = load_image_dataset(root)
        total = dataset.num_samples()
        if images.valid_images >= total:
            raise ConfigError(f"images.valid_images={images.valid_images} leaves no training images of the {total} "
                              f"in {root}; use fewer than {total}")
        cut = total - images.valid_images
        train.append(ImageShardSource(dataset, images.image_size, images.classes, 0, cut, cfg.verify, **options))
        if images.valid_images:
            valid.append(ImageShardSource(dataset, images.image_size, images.classes, cut, total, cfg.verify,
                                          **options))
    return TrainingData(train=train, train_weights=weights, valid=valid, valid_weights=weights if valid else [],
                        vocab_size=None if tokenizer is None else tokenizer.vocab_size,
                        tokenizer_fingerprint="" if tokenizer is None else tokenizer.fingerprint, roots=roots)
