"""The tokenizer of captions for text-to-image training.

`data.tokenizer` names one (a sentencepiece .model, "bytes", or "hf:<dir>" for the tokenizer of a
local Hugging Face text encoder, read from disk only); otherwise a byte-fallback BPE of
`images.caption_vocab_size` pieces is trained once on the training set's captions and cached under
`<cache>/tokenizers/captions-<dataset>-bpe<V>.model`, keyed by the dataset manifest's sha256, so
every rank (and `gigatron sample` later) finds the same model.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from gigatron.config.schema import DataConfig, ImagesConfig
from gigatron.data.corpus import resolve_cache_dir
from gigatron.data.default_dataset import build_lock
from gigatron.data.image_shards import SPLIT, load_image_dataset
from gigatron.data.manifest import MANIFEST_NAME
from gigatron.data.sp_tokenizer import load_tokenizer, train_sentencepiece
from gigatron.data.tar_index import TarIndex


def caption_tokenizer_path(cfg: DataConfig, images: ImagesConfig, root: Path) -> Path:
    """Where the captions BPE of the dataset at `root` is (or will be) cached."""
    digest = hashlib.sha256((Path(root) / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
    return resolve_cache_dir(cfg.cache_dir) / "tokenizers" / f"captions-{digest}-bpe{images.caption_vocab_size}.model"


def dataset_captions(root: Path) -> list[str]:
    """Every caption of an image (or latent) dataset's train split, in sample order."""
    captions = []
    for shard in load_image_dataset(root).splits[SPLIT]:
        index = TarIndex(shard.path)
        captions += [index.read(i, "txt")["txt"].decode("utf-8-sig").strip() for i in range(len(index))]
    return captions


def _write_captions(root: Path, out: Path) -> None:
    with open(out, "w", encoding="utf-8") as handle:
        for text in dataset_captions(root):
            handle.write(text.replace("\n", " ") + "\n")


class HFCaptionTokenizer:
    """The tokenizer files of a local Hugging Face text encoder (with its special tokens, as it was trained)."""

    kind = "hf"

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        directory = Path(path).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"data.tokenizer=hf:{path}: no such directory (a local Hugging Face model "
                                    "directory holding its tokenizer files)")
        self._tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.vocab_size = len(self._tokenizer)
        digest = hashlib.sha256()
        for file in sorted(directory.glob("*")):
            if file.is_file() and ("token" in file.name or file.name.startswith(("vocab", "spiece", "merges"))):
                digest.update(file.name.encode() + file.read_bytes())
        self.fingerprint = "hf-" + digest.hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        """Token ids with the tokenizer's own special tokens."""
        return list(self._tokenizer(text)["input_ids"])


def caption_tokenizer(cfg: DataConfig, images: ImagesConfig, root: Path, train: bool = True):
    """`data.tokenizer`, or the cached captions BPE of the dataset at `root` (trained when missing and `train`)."""
    if cfg.tokenizer is not None and cfg.tokenizer.startswith("hf:"):
        return HFCaptionTokenizer(cfg.tokenizer[3:])
    if cfg.tokenizer is not None:
        return load_tokenizer(cfg.tokenizer)
    path = caption_tokenizer_path(cfg, images, root)
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
                    train_sentencepiece([captions], images.caption_vocab_size, "bpe", path)
    return load_tokenizer(path)
