"""Data-parallel batching over one global sample order that does not depend on the DP size.

The stream of samples is defined once for the whole job: epoch e visits the samples in the order
`default_rng([seed, e]).permutation(N)`, epochs are concatenated, and global batch k is the next
`global_batch_size` samples of that stream. A DP rank only chooses which contiguous slice of each
global batch it computes. Because of that, the loader's whole state is one global counter
(`consumed_samples`): a checkpoint written with dp=2 resumes exactly with dp=1 or dp=4.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch


class SampleSource(Protocol):
    """Anything indexable that returns int64 arrays of one shape, e.g. `PackedSamples`."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> np.ndarray: ...


def _check_rank(dp_rank: int, dp_size: int) -> None:
    if dp_size < 1:
        raise ValueError(f"dp_size must be >= 1, got {dp_size}")
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank must be in [0, {dp_size}), got {dp_rank}")


def _stack(source: SampleSource, indices: np.ndarray, micro_batch_size: int) -> list[torch.Tensor]:
    rows = np.stack([source[int(i)] for i in indices]).astype(np.int64, copy=False)
    batch = torch.from_numpy(rows)
    return list(torch.split(batch, micro_batch_size))


class GlobalBatchLoader:
    """Yields this DP rank's micro-batches for each optimizer step, in a DP-size-independent order."""

    def __init__(
        self,
        source: SampleSource,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        shuffle: bool = True,
    ) -> None:
        _check_rank(dp_rank, dp_size)
        if micro_batch_size < 1 or global_batch_size < 1:
            raise ValueError(
                f"train.micro_batch_size ({micro_batch_size}) and train.global_batch_size "
                f"({global_batch_size}) must be >= 1"
            )
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(
                f"train.global_batch_size ({global_batch_size}) must be divisible by "
                f"train.micro_batch_size * dp ({micro_batch_size} * {dp_size} = {micro_batch_size * dp_size})"
            )
        if len(source) < 1:
            raise ValueError("the training data has no samples")
        self.source = source
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_samples = len(source)
        self.consumed_samples = 0
        self._perms: dict[int, np.ndarray] = {}

    @property
    def micro_batches_per_step(self) -> int:
        """Gradient-accumulation steps: micro-batches each rank runs per optimizer step."""
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            else:
                order = np.arange(self.num_samples)
            # A global batch touches at most a few consecutive epochs; older ones are never revisited.
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = order
        return self._perms[epoch]

    def _sample_indices(self, first: int, count: int) -> np.ndarray:
        positions = np.arange(first, first + count)
        epochs = positions // self.num_samples
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self._epoch_order(int(epoch))[positions[mask] % self.num_samples]
        return out

    def next_batch(self) -> list[torch.Tensor]:
        """This rank's micro-batches for the next optimizer step, each int64 [micro, seq_len+1]."""
        per_rank = self.global_batch_size // self.dp_size
        first = self.consumed_samples + self.dp_rank * per_rank
        indices = self._sample_indices(first, per_rank)
        self.consumed_samples += self.global_batch_size
        return _stack(self.source, indices, self.micro_batch_size)

    def state_dict(self) -> dict[str, int]:
        """Global counters only, so the state is valid for any DP size."""
        return {"consumed_samples": self.consumed_samples, "seed": self.seed, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the global stream; adopts the saved seed so the epoch order continues unchanged."""
        saved = int(state["num_samples"])
        if saved != self.num_samples:
            raise ValueError(
                f"data loader state is for {saved} training samples but the current data has "
                f"{self.num_samples}: the corpus, tokenizer, data.seq_len or data.valid_fraction changed"
            )
        self.seed = int(state["seed"])
        self.consumed_samples = int(state["consumed_samples"])
        self._perms = {}
