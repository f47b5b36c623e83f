"""From the `data` config section to the sample sources the trainer reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gigatron.config.errors import ConfigError
from gigatron.config.schema import DataConfig
from gigatron.data.manifest import TextDataset, load_text_dataset
from gigatron.data.token_source import TokenShardSource


@dataclass
class LMData:
    """Train and validation sources (one per dataset), their blend weights, and tokenizer facts."""

    train: list[TokenShardSource]
    train_weights: list[float]
    valid: list[TokenShardSource]
    valid_weights: list[float]
    vocab_size: int
    tokenizer_fingerprint: str
    roots: list[Path]


def dataset_roots(cfg: DataConfig) -> tuple[list[Path], list[float]]:
    """Dataset directories and weights; builds the default dataset on first use."""
    if cfg.source == "default":
        from gigatron.data.default_dataset import ensure_default_dataset

        return [ensure_default_dataset(cfg.cache_dir, cfg.seq_len, cfg.default_vocab_size)], [1.0]
    return [Path(d.path) for d in cfg.datasets], [d.weight for d in cfg.datasets]


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


def build_lm_data(cfg: DataConfig) -> LMData:
    """Load and check the manifests, then open every split's shards."""
    roots, weights = dataset_roots(cfg)
    datasets = [load_text_dataset(root) for root in roots]
    _check_consistent(cfg, datasets)
    train = [TokenShardSource(ds, "train", cfg.verify) for ds in datasets]
    with_valid = [(ds, w) for ds, w in zip(datasets, weights, strict=True) if ds.num_samples("valid") > 0]
    valid = [TokenShardSource(ds, "valid", cfg.verify) for ds, _ in with_valid]
    return LMData(
        train=train, train_weights=weights, valid=valid, valid_weights=[w for _, w in with_valid],
        vocab_size=max(ds.vocab_size for ds in datasets), tokenizer_fingerprint=datasets[0].fingerprint,
        roots=roots,
    )
