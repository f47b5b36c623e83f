"""Is the loader ever the bottleneck? Tokens/s it delivers vs what the smoke model consumes.

Three numbers from one run on the default Shakespeare shards (seq 128):
  - delivered: `GlobalBatchLoader` with 4 worker processes, global batch 64, shuffled global order;
  - consumed:  the smoke GPT training on the same batches (forward, backward, AdamW step);
  - plain tar: reading every member of the same shards sequentially with `tarfile` + numpy.
Targets: delivered >= 20x consumed, delivered >= 0.5x plain tar. Also shard writing: tokens/s of
`write_text_shards` tokenizing the corpus with the default tokenizer.

    python benchmarks/data_loader.py [--steps 300] [--workers 4]
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.config import load_config  # noqa: E402
from gigatron.data.build import build_lm_data  # noqa: E402
from gigatron.data.corpus import default_corpus_files  # noqa: E402
from gigatron.data.loader import GlobalBatchLoader  # noqa: E402
from gigatron.models.layers.factory import LayerFactory  # noqa: E402
from gigatron.models.layers.init import initialize_parameters  # noqa: E402
from gigatron.models.registry import build_model  # noqa: E402

CONFIG = REPO / "configs" / "gpt" / "smoke.yaml"
GLOBAL_BATCH = 64
MICRO = 8


def delivered_tokens_per_s(data, steps: int, workers: int) -> float:
    loader = GlobalBatchLoader(data.train, GLOBAL_BATCH, MICRO, 0, 1, seed=1, num_workers=workers)
    for _ in range(5):  # start the workers, fill their queues
        loader.next_batch()
    start = time.perf_counter()
    tokens = 0
    for _ in range(steps):
        tokens += sum(mb[:, :-1].numel() for mb in loader.next_batch())
    elapsed = time.perf_counter() - start
    loader.close()
    return tokens / elapsed


def consumed_tokens_per_s(data, steps: int) -> float:
    cfg = load_config(CONFIG)
    model = build_model(cfg.model, LayerFactory())
    initialize_parameters(model, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = GlobalBatchLoader(data.train, GLOBAL_BATCH, MICRO, 0, 1, seed=1)
    batches = [loader.next_batch() for _ in range(steps)]
    start = time.perf_counter()
    tokens = 0
    for micro_batches in batches:
        for mb in micro_batches:
            logits = model(mb[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), mb[:, 1:].flatten())
            (loss / len(micro_batches)).backward()
            tokens += mb[:, :-1].numel()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - start)


def plain_tar_tokens_per_s(data) -> float:
    shards = [s.path for s in data.train[0].shards]
    start = time.perf_counter()
    tokens = 0
    for path in shards:
        with tarfile.open(path) as tar:
            for info in tar:
                array = np.load(io.BytesIO(tar.extractfile(info).read())).astype(np.int64)
                tokens += array.size - 1
    return tokens / (time.perf_counter() - start)


def writing_tokens_per_s(data, workers: int) -> tuple[float, int]:
    from gigatron.data.text_shards import write_text_shards

    tokenizer = data.train[0].dataset.tokenizer["path"]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        manifest = write_text_shards([str(p) for p in default_corpus_files()], tokenizer, 128, Path(out) / "ds",
                                     workers=workers)
        elapsed = time.perf_counter() - start
    tokens = sum(split["num_tokens"] for split in manifest["splits"].values())
    return tokens / elapsed, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    data = build_lm_data(load_config(CONFIG).data)
    delivered = delivered_tokens_per_s(data, args.steps, args.workers)
    delivered_inline = delivered_tokens_per_s(data, args.steps, 0)
    consumed = consumed_tokens_per_s(data, 10)
    plain = plain_tar_tokens_per_s(data)
    written, total = writing_tokens_per_s(data, args.workers)
    print(f"loader, {args.workers} workers:  {delivered:12,.0f} tokens/s")
    print(f"loader, no workers: {delivered_inline:12,.0f} tokens/s")
    print(f"smoke GPT consumes: {consumed:12,.0f} tokens/s")
    print(f"plain tarfile read: {plain:12,.0f} tokens/s")
    print(f"shard writing:      {written:12,.0f} tokens/s ({total:,} tokens, {args.workers} workers)")
    print(f"delivered / consumed = {delivered / consumed:.1f}x (target >= 20x)")
    print(f"delivered / plain tar = {delivered / plain:.2f}x (target >= 0.5x)")


if __name__ == "__main__":
    main()
