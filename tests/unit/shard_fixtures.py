"""Small synthetic shard datasets whose samples say who they are: every token of sample i is i."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import webdataset as wds

from gigatron.data.manifest import MANIFEST_NAME, TEXT_FORMAT, file_sha256

SEQ_LEN = 8
VOCAB = 1 << 20  # uint32 ids, so sample numbers fit


def write_dataset(root: Path, train: int, valid: int = 0, per_shard: int = 10, offset: int = 0,
                  fingerprint: str = "synthetic-v1", seq_len: int = SEQ_LEN) -> Path:
    """A dataset whose train sample i holds the id offset + i (valid: offset + 500_000 + i)."""
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, count, base in (("train", train, offset), ("valid", valid, offset + 500_000)):
        shards = []
        for first in range(0, count, per_shard):
            name = f"{split}-{first // per_shard:06d}.tar"
            with wds.TarWriter(str(root / name)) as sink:
                for i in range(first, min(count, first + per_shard)):
                    sink.write({"__key__": f"{i:010d}", "tokens.npy": np.full(seq_len + 1, base + i, np.uint32)})
            n = min(count, first + per_shard) - first
            shards.append({"file": name, "samples": n, "bytes": (root / name).stat().st_size,
                           "sha256": file_sha256(root / name)})
        if count:
            splits[split] = {"num_samples": count, "num_tokens": count * (seq_len + 1), "shards": shards}
    manifest = {"format": TEXT_FORMAT, "seq_len": seq_len, "dtype": "uint32", "vocab_size": VOCAB,
                "tokenizer": {"kind": "synthetic", "fingerprint": fingerprint}, "splits": splits}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    return root


def ids(batch) -> list[int]:
    """Sample ids of a micro-batch tensor (first token of each row)."""
    return batch[:, 0].tolist()
