"""Data-parallel batching over one global sample order that does not depend on the DP size.

Global batch k is global samples [k*G, (k+1)*G) of `GlobalOrder` (one dataset or a weighted
blend); DP rank r computes the contiguous slice r of it, cut into micro-batches. The loader's
whole state is therefore the counter `consumed_samples`: a checkpoint written with dp=2 resumes
exactly with dp=1 or dp=4, with no sample repeated or skipped. Worker processes (torch
DataLoader) read ahead; since they only ever fetch what the counter says comes next, read-ahead
never changes the state.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gigatron.data.errors import DataError, RemoteDataError
from gigatron.data.global_order import GlobalOrder
from gigatron.data.prefetch import ShardPrefetcher, shard_caches

SKIPPED = -1  # token id filling a sample that on_error=skip dropped; the LM task ignores it


class SampleSource(Protocol):
    """Anything indexable that returns samples of one shape: int64 arrays (`TokenShardSource`) or
    dicts of arrays (`ImageShardSource`, which also offers `placeholder()` for skipped samples)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> np.ndarray: ...


class OrderedSamples(Dataset):
    """Global sample number -> sample array, through the global order. Batched via `__getitems__`."""

    def __init__(self, sources: Sequence[SampleSource], order: GlobalOrder, on_error: str) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error={on_error!r}; valid: raise, skip")
        self.sources, self.order, self.on_error = list(sources), order, on_error

    def __getitems__(self, numbers: list[int]) -> list[Any]:
        datasets, samples = self.order(np.asarray(numbers, dtype=np.int64))
        out = []
        for number, d, i in zip(numbers, datasets.tolist(), samples.tolist(), strict=True):
            try:
                sample = self.sources[d][i]
            except RemoteDataError:
                raise  # a whole shard: skipping its samples one by one would hide an outage
            except DataError:
                if self.on_error == "raise":
                    raise
                # Same shape, flagged: the batch and every other sample's position stay as they were.
                sample = self._placeholder(d)
            if isinstance(sample, dict):
                # Tasks that draw noise per sample seed it with the global sample number, so that
                # the draw does not depend on which rank or micro-batch the sample lands in.
                sample = {**sample, "number": np.int64(number)}
            out.append(sample)
        return out

    def _placeholder(self, dataset: int) -> Any:
        source = self.sources[dataset]
        if hasattr(source, "placeholder"):
            return source.placeholder()
        length = getattr(source, "sample_len", None) or len(source[0])
        return np.full(length, SKIPPED, dtype=np.int64)

    def __getitem__(self, number: int) -> Any:
        return self.__getitems__([number])[0]

    def __len__(self) -> int:  # the stream is endless; DataLoader only needs this to exist
        return 2**62


class _RankBatches:
    """Global sample numbers of this rank's micro-batches, step after step, from `start`."""

    def __init__(self, start: int, global_batch: int, micro: int, dp_rank: int, dp_size: int) -> None:
        self.start, self.global_batch, self.micro = start, global_batch, micro
        self.offset = dp_rank * (global_batch // dp_size)
        self.per_step = global_batch // (micro * dp_size)

    def __iter__(self) -> Iterator[list[int]]:
        base = self.start
        while True:
            for m in range(self.per_step):
                first = base + self.offset + m * self.micro
                yield list(range(first, first + self.micro))
            base += self.global_batch


def _ignore_preemption_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGUSR1 to the trainer process.

    SLURM signals every process of a job step; a worker dying of SIGTERM would crash the trainer
    before it can agree with the other ranks, save and exit with the requeue code.
    """
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


Batch = torch.Tensor | dict[str, torch.Tensor]


def _stack(rows: list[Any]) -> Batch:
    if isinstance(rows[0], dict):  # dtypes kept: images stay uint8 until the model reads them
        return {key: torch.from_numpy(np.stack([row[key] for row in rows])) for key in rows[0]}
    return torch.from_numpy(np.stack(rows).astype(np.int64, copy=False))


def skipped_in(batch: Batch) -> int:
    """Samples of a micro-batch that data.on_error=skip replaced by placeholders."""
    if isinstance(batch, dict):
        return int((~batch["present"]).sum())
    return int((batch[:, 0].numpy() == SKIPPED).sum())  # numpy: a tenth of torch's per-call overhead here


class GlobalBatchLoader:
    """Yields this DP rank's micro-batches for each optimizer step."""

    def __init__(
        self,
        sources: Sequence[SampleSource] | SampleSource,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        shuffle: bool = True,
        weights: Sequence[float] | None = None,
        num_workers: int = 0,
        on_error: str = "raise",
        prefetch_shards: int = 8,
    ) -> None:
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank must be in [0, dp_size) with dp_size >= 1, got {dp_rank}, {dp_size}")
        if micro_batch_size < 1 or global_batch_size < 1:
            raise ValueError(f"train.micro_batch_size ({micro_batch_size}) and train.global_batch_size "
                             f"({global_batch_size}) must be >= 1")
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"train.global_batch_size ({global_batch_size}) must be divisible by "
                             f"micro_batch_size * dp_size = {micro_batch_size} * {dp_size}")
        self.sources = list(sources) if isinstance(sources, (list, tuple)) else [sources]
        self.sizes = [len(s) for s in self.sources]
        self.weights = list(weights) if weights is not None else [1.0] * len(self.sources)
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed, self.shuffle, self.num_workers, self.on_error = seed, shuffle, num_workers, on_error
        self.prefetch_shards = prefetch_shards
        self.caches = shard_caches(self.sources)
        self._prefetcher: ShardPrefetcher | None = None
        self.consumed_samples = 0
        self.skipped_samples = 0
        self._build_order()

    def _build_order(self) -> None:
        self.close()
        self._order = GlobalOrder(self.sizes, self.weights, self.seed, self.shuffle)
        self._dataset = OrderedSamples(self.sources, self._order, self.on_error)
        self._iterator: Iterator[Batch] | None = None

    @property
    def micro_batches_per_step(self) -> int:
        """Gradient-accumulation steps of this rank."""
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)

    def _batches(self) -> Iterator[Batch]:
        if self._iterator is None:
            sampler = _RankBatches(self.consumed_samples, self.global_batch_size, self.micro_batch_size,
                                   self.dp_rank, self.dp_size)
            extra: dict[str, Any] = {}
            if self.num_workers > 0:
                extra = {"prefetch_factor": 4, "persistent_workers": False,
                         "worker_init_fn": _ignore_preemption_signals}
            # Its own generator: a DataLoader draws its workers' base seed from the one it is given,
            # else from torch's global generator, which would leave a resumed run's dropout one draw
            # away from the uninterrupted run's (the iterator is created once per start).
            self._iterator = iter(DataLoader(self._dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                             collate_fn=_stack, generator=torch.Generator().manual_seed(self.seed),
                                             **extra))
            if self.caches and self.prefetch_shards > 0:
                # Started after the workers are forked: a fork copies no running thread.
                ahead = _RankBatches(self.consumed_samples, self.global_batch_size, self.micro_batch_size,
                                     self.dp_rank, self.dp_size)
                self._prefetcher = ShardPrefetcher(self.sources, self._order, ahead,
                                                   lambda: self.consumed_samples, self.prefetch_shards).start()
        return self._iterator

    def next_batch(self) -> list[Batch]:
        """This rank's micro-batches for the next optimizer step: int64 [micro, sample_len] token
        batches, or dicts of stacked arrays (plus each sample's global "number") for image sources."""
        batches = self._batches()
        micro = [next(batches) for _ in range(self.micro_batches_per_step)]
        self.consumed_samples += self.global_batch_size
        if self._prefetcher is not None:
            self._prefetcher.advanced()
        self.skipped_samples += sum(skipped_in(mb) for mb in micro)
        return micro

    def state_dict(self) -> dict[str, Any]:
        """Global counters only: valid for any DP size with the same global batch."""
        return {"consumed_samples": self.consumed_samples, "seed": self.seed, "sizes": self.sizes,
                "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's counters; refuses a state from different data."""
        if list(state["sizes"]) != self.sizes:
            raise ValueError(f"loader state is for datasets of {list(state['sizes'])} samples but the current data "
                             f"has {self.sizes}: the shards, tokenizer or data.seq_len changed")
        if [float(w) for w in state["weights"]] != [float(w) for w in self.weights]:
            raise ValueError(f"loader state has blend weights {state['weights']}, the config has {self.weights}; "
                             "changing weights mid-run would change the order of every later sample")
        self.seed = int(state["seed"])
        self.consumed_samples = int(state["consumed_samples"])
        self._build_order()

    def remote_counters(self) -> dict[str, int]:
        """Retries, downloads and evictions of the remote datasets' caches on this node so far, as
        this rank's process tree saw them (empty when every dataset is local)."""
        if not self.caches:
            return {}
        return {"data_retries": sum(c.store.retries.value for c in self.caches),
                "data_downloads": sum(c.downloads.value for c in self.caches),
                "data_evictions": sum(c.evictions.value for c in self.caches)}

    def close(self) -> None:
        """Stop worker processes and the shard prefetcher."""
        if getattr(self, "_prefetcher", None) is not None:
            self._prefetcher.stop()
            self._prefetcher = None
        self._iterator = None
