"""The tokenizer of captions for text-to-image training.

`data.tokenizer` names one (a sentencepiece .model, or "bytes"); otherwise a byte-fallback BPE of
`data.caption_vocab_size` pieces is trained once on the training set's captions and cached under
`<cache>/tokenizers/captions-<dataset>-bpe<V>.model`, keyed by the dataset manifest's sha256, so
every rank (and `gigatron sample` later) finds the same model.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from gigatron.config.schema import DataConfig
from gigatron.data.corpus import resolve_cache_dir
from gigatron.data.default_dataset import build_lock
from gigatron.data.image_shards import SPLIT, load_image_dataset
from gigatron.data.manifest import MANIFEST_NAME
from gigatron.data.sp_tokenizer import load_tokenizer, train_sentencepiece
from gigatron.data.tar_index import TarIndex


def caption_tokenizer_path(cfg: DataConfig, root: Path) -> Path:
    """Where the captions BPE of the dataset at `root` is (or will be) cached."""
    digest = hashlib.sha256((Path(root) / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
    return resolve_cache_dir(cfg.cache_dir) / "tokenizers" / f"captions-{digest}-bpe{cfg.caption_vocab_size}.model"


def _write_captions(root: Path, out: Path) -> None:
    dataset = load_image_dataset(root)
    with open(out, "w", encoding="utf-8") as handle:
        for shard in dataset.splits[SPLIT]:
            index = TarIndex(shard.path)
            for i in range(len(index)):
                text = index.read(i, "txt")["txt"].decode("utf-8-sig").strip()
                handle.write(text.replace("\n", " ") + "\n")


def caption_tokenizer(cfg: DataConfig, root: Path, train: bool = True):
    """`data.tokenizer`, or the cached captions BPE of the dataset at `root` (trained when missing and `train`)."""
    if cfg.tokenizer is not None:
        return load_tokenizer(cfg.tokenizer)
    path = caption_tokenizer_path(cfg, root)
    if not path.is_file():
        if not train:
            raise FileNotFoundError(f"the captions tokenizer {path} of {root} is missing; it is written when the "
                                    "run starts (or pass data.tokenizer)")
        path.parent.mkdir(parents=True, exist_ok=True)
        with build_lock(path.parent / f".{path.name}.lock"):
            if not path.is_file():
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    captions = Path(tmp) / "captions.txt"
                    _write_captions(Path(root), captions)
                    train_sentencepiece([captions], cfg.caption_vocab_size, "bpe", path)
    return load_tokenizer(path)
