"""Turn the `data:` config section into train/valid sample sets."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from gigatron.config.schema import DataConfig
from gigatron.data.byte_tokenizer import ByteTokenizer
from gigatron.data.corpus import default_corpus_files
from gigatron.data.packed import PackedSamples, split_train_valid
from gigatron.data.token_file import Tokenizer, load_or_build_tokens

TOKENIZERS = ("bytes",)
SOURCES = ("default", "files")


@dataclass
class LMData:
    """Language-model data ready for a loader, plus what the model needs to know about it."""

    train: PackedSamples
    valid: PackedSamples | None
    vocab_size: int
    tokenizer_fingerprint: str


def make_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called `name` in `data.tokenizer`."""
    if name == "bytes":
        return ByteTokenizer()
    raise ValueError(f"data.tokenizer: unknown tokenizer {name!r}; valid values: {', '.join(TOKENIZERS)}")


def resolve_files(patterns: list[str]) -> list[Path]:
    """Expand `data.paths` globs in order; each pattern must match at least one file."""
    if not patterns:
        raise ValueError("data.paths is empty; data.source: files needs at least one file or glob")
    files: list[Path] = []
    for pattern in patterns:
        # sorted: glob order is filesystem-dependent and the token order must be reproducible.
        matches = sorted(
            m for m in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(m)
        )
        if not matches:
            raise FileNotFoundError(f"data.paths: pattern {pattern!r} matches no files")
        files.extend(Path(m) for m in matches)
    return files


def build_lm_data(cfg: DataConfig) -> LMData:
    """Tokenize (or load the cached tokens of) the configured corpus and split train/valid."""
    tokenizer = make_tokenizer(cfg.tokenizer)
    if cfg.source == "default":
        files = default_corpus_files(cfg.cache_dir)
    elif cfg.source == "files":
        files = resolve_files(cfg.paths)
    else:
        raise ValueError(f"data.source: unknown source {cfg.source!r}; valid values: {', '.join(SOURCES)}")
    tokens = load_or_build_tokens(files, tokenizer, cfg.cache_dir)
    train, valid = split_train_valid(tokens, cfg.seq_len, cfg.valid_fraction)
    return LMData(train, valid, tokenizer.vocab_size, tokenizer.fingerprint)
