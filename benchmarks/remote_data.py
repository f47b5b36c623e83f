"""Reading shards from a URL: cold and warm cache vs local disk vs WebDataset's own URL pipeline,
against what the hybrid smoke model consumes; and array tokenization with 1, 2, 4 tasks.

On the default Shakespeare shards (28 train tars of 1,024 samples, 2.1 MB each), served by a
loopback HTTP server (tests/http_store.py):
  - local disk:  `GlobalBatchLoader` over the shards on disk (shuffled global order, batch 64);
  - URL, cold:   the same loader reading the URL with an empty shard cache (every shard downloaded,
                 sha256-checked and cached while training-order batches are read);
  - URL, warm:   again, with the cache filled by the cold pass (no download);
  - WebDataset:  `webdataset.WebDataset(urls)` streaming the same tars sequentially (curl), decoding
                 each .npy: no global shuffle, no resume point; the reference streaming reader;
  - consumed:    the hybrid smoke model training on the same batches (forward, backward, AdamW).
Target: URL loader (cold and warm) >= 20x consumed.

Tokenization: `gigatron data shard --task-index i --num-tasks n` over the 78 corpus files with the
default BPE-2048 tokenizer, n = 1, 2, 4, then `gigatron data merge`; tokens/s from the first task's
start to the merge's end. With --slurm (SLURM_CONF set, e.g. the local cluster) through
slurm/shard.sh; else as n local processes.

    python benchmarks/remote_data.py [--steps 300] [--tasks 1,2,4] [--slurm]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.config import load_config  # noqa: E402
from gigatron.config.schema import DataConfig, DatasetSpec  # noqa: E402
from gigatron.data.build import build_lm_data  # noqa: E402
from gigatron.data.corpus import default_corpus_files  # noqa: E402
from gigatron.data.default_dataset import ensure_default_dataset  # noqa: E402
from gigatron.data.loader import GlobalBatchLoader  # noqa: E402
from gigatron.data.manifest import load_text_dataset  # noqa: E402
from gigatron.models.layers.factory import LayerFactory  # noqa: E402
from gigatron.models.layers.init import initialize_parameters  # noqa: E402
from gigatron.models.registry import build_model  # noqa: E402
from tests.http_store import StoreServer  # noqa: E402

CONFIG = REPO / "configs" / "hybrid" / "smoke.yaml"
GLOBAL_BATCH = 64
MICRO = 8
SAMPLE_BYTES = 129 * 2  # 129 uint16 ids per sample


def loader_rate(data, steps: int, workers: int) -> tuple[float, dict[str, int]]:
    """Samples/s of `steps` global batches (including start-up and every download they cause)."""
    loader = GlobalBatchLoader(data.train, GLOBAL_BATCH, MICRO, 0, 1, seed=1, num_workers=workers)
    start = time.perf_counter()
    for _ in range(steps):
        loader.next_batch()
    elapsed = time.perf_counter() - start
    counters = loader.remote_counters()
    loader.close()
    return steps * GLOBAL_BATCH / elapsed, counters


def webdataset_rate(urls: list[str], samples: int) -> float:
    import webdataset as wds

    pipeline = wds.WebDataset(urls, shardshuffle=False, empty_check=False).to_tuple("tokens.npy")
    start = time.perf_counter()
    count = 0
    for (payload,) in pipeline:
        np.load(io.BytesIO(payload)).astype(np.int64)
        count += 1
        if count == samples:
            break
    return count / (time.perf_counter() - start)


def consumed_rate(data, steps: int) -> float:
    cfg = load_config(CONFIG)
    model = build_model(cfg.model, LayerFactory())
    initialize_parameters(model, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = GlobalBatchLoader(data.train, GLOBAL_BATCH, MICRO, 0, 1, seed=1)
    batches = [loader.next_batch() for _ in range(steps)]
    start = time.perf_counter()
    for micro_batches in batches:
        for mb in micro_batches:
            logits = model(mb[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), mb[:, 1:].flatten())
            (loss / len(micro_batches)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * GLOBAL_BATCH / (time.perf_counter() - start)


def reading(steps: int, workers: int) -> None:
    root = ensure_default_dataset()

    def local():  # fresh sources: every reader indexes the tar headers it touches, as a new run does
        return build_lm_data(DataConfig(source="shards", datasets=[DatasetSpec(str(root))], seq_len=128))

    consumed = consumed_rate(local(), 3)
    disk, _ = loader_rate(local(), steps, workers)
    with StoreServer(root) as server, tempfile.TemporaryDirectory() as cache:
        def remote():
            return build_lm_data(DataConfig(source="shards", datasets=[DatasetSpec(server.url)], seq_len=128,
                                            cache_dir=cache))

        cold, cold_counts = loader_rate(remote(), steps, workers)
        warm, warm_counts = loader_rate(remote(), steps, workers)
        downloaded = sum(p.stat().st_size for p in Path(cache).rglob("*.tar"))  # no limit: nothing evicted
        urls = [f"{server.url}/{s.path.name}" for s in load_text_dataset(root).splits["train"]]
        wds_rate = webdataset_rate(urls, steps * GLOBAL_BATCH)
    print(f"reading {steps} global batches of {GLOBAL_BATCH} samples, {workers} loader workers")
    print("| reader | samples/s | MB/s of samples | x hybrid smoke consumption |")
    print("|---|---|---|---|")
    for name, rate in (("local disk", disk), (f"URL, cold cache ({cold_counts['data_downloads']} shards, "
                                              f"{downloaded / 1e6:.0f} MB downloaded)", cold),
                       (f"URL, warm cache ({warm_counts['data_downloads']} downloads)", warm),
                       ("WebDataset(url), sequential", wds_rate), ("hybrid smoke consumes", consumed)):
        print(f"| {name} | {rate:,.0f} | {rate * SAMPLE_BYTES / 1e6:.2f} | {rate / consumed:.1f} |")
    print(f"cold pass: {downloaded / 1e6 * cold / (steps * GLOBAL_BATCH):.1f} MB/s of shards downloaded, "
          f"{cold_counts['data_retries']} retries")
    print(f"URL cold / consumed = {cold / consumed:.1f}x, warm / consumed = {warm / consumed:.1f}x (target >= 20x)")


def _slurm_build(tasks: int, arguments: list[str], logs: Path) -> None:
    proc = subprocess.run(["bash", str(REPO / "slurm" / "shard.sh"), "--tasks", str(tasks), "--cpus-per-task=1",
                           "--time=30", f"--output={logs}/shard-%A_%a.out", "--", *arguments],
                          capture_output=True, text=True, cwd=REPO, check=True)
    merge = proc.stdout.strip().splitlines()[-1].split()[1]
    while True:
        info = subprocess.run(["scontrol", "show", "job", "-o", merge], capture_output=True, text=True).stdout
        state = dict(re.findall(r"(\w+)=(\S*)", info)).get("JobState", "")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            if state != "COMPLETED":
                raise RuntimeError(f"merge job {merge} ended {state}; logs in {logs}")
            return
        time.sleep(0.2)


def _local_build(tasks: int, arguments: list[str]) -> None:
    gigatron = [sys.executable, "-m", "gigatron", "data"]
    procs = [subprocess.Popen([*gigatron, "shard", *arguments, "--task-index", str(i), "--num-tasks", str(tasks)],
                              stdout=subprocess.DEVNULL, cwd=REPO) for i in range(tasks)]
    if any(p.wait() for p in procs):
        raise RuntimeError("a shard task failed")
    out = arguments[arguments.index("--out") + 1]
    subprocess.run([*gigatron, "merge", out], check=True, stdout=subprocess.DEVNULL, cwd=REPO)


def tokenizing(task_counts: list[int], slurm: bool) -> None:
    files = [str(p) for p in default_corpus_files()]
    tokenizer = load_text_dataset(ensure_default_dataset()).tokenizer["path"]
    print(f"\narray tokenization of {len(files)} files ({sum(os.path.getsize(f) for f in files) / 1e6:.1f} MB), "
          f"{'slurm/shard.sh on ' + os.environ.get('SLURM_CONF', '?') if slurm else 'local processes'}, "
          "1 worker per task")
    print("| tasks | seconds | tokens/s | same dataset as n=1 |")
    print("|---|---|---|---|")
    first: dict | None = None
    with tempfile.TemporaryDirectory(dir=REPO if slurm else None) as scratch:
        for n in task_counts:
            out = Path(scratch) / f"n{n}"
            arguments = ["--input", *files, "--tokenizer", tokenizer, "--seq-len", "128", "--workers", "1",
                         "--out", str(out)]
            start = time.perf_counter()
            if slurm:
                (Path(scratch) / f"logs{n}").mkdir()
                _slurm_build(n, arguments, Path(scratch) / f"logs{n}")
            else:
                _local_build(n, arguments)
            elapsed = time.perf_counter() - start
            manifest = json.loads((out / "manifest.json").read_text())
            same = "-" if first is None else ("yes" if manifest == first else "NO")
            first = first or manifest
            print(f"| {n} | {elapsed:.1f} | {manifest['total_tokens'] / elapsed:,.0f} | {same} |")
            if n != task_counts[0]:
                shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="global batches per loader measurement")
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes (default: inline)")
    parser.add_argument("--tasks", default="1,2,4", help="array sizes to time (empty: skip)")
    parser.add_argument("--slurm", action="store_true", help="submit the array builds with slurm/shard.sh")
    args = parser.parse_args()
    reading(args.steps, args.workers)
    if args.tasks:
        tokenizing([int(n) for n in args.tasks.split(",")], args.slurm)


if __name__ == "__main__":
    main()
