"""Fixed-length language-model samples cut from one flat token array.

Sample i is `tokens[i*seq_len : i*seq_len + seq_len + 1]`: seq_len inputs plus the one extra token
needed for the shifted targets. Consecutive samples share a single boundary token, so no text is
skipped, and documents are packed across sample boundaries (bos/eos mark where they meet).
"""

from __future__ import annotations

import math

import numpy as np


def num_samples(num_tokens: int, seq_len: int) -> int:
    """How many whole samples of seq_len+1 tokens fit at stride seq_len."""
    if seq_len < 1:
        raise ValueError(f"data.seq_len must be >= 1, got {seq_len}")
    return max(0, (num_tokens - 1) // seq_len)


class PackedSamples:
    """A view of samples [start, end) of `tokens`; indexing returns int64 arrays of seq_len+1."""

    def __init__(self, tokens: np.ndarray, seq_len: int, start: int = 0, end: int | None = None) -> None:
        total = num_samples(len(tokens), seq_len)
        end = total if end is None else end
        if not 0 <= start <= end <= total:
            raise ValueError(f"sample range [{start}, {end}) is outside [0, {total}] for seq_len={seq_len}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.start = start
        self.end = end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index {i} out of range for {n} samples")
        lo = (self.start + i) * self.seq_len
        # Copy out of the (possibly memory-mapped, uint16) array into the dtype torch wants.
        return np.asarray(self.tokens[lo : lo + self.seq_len + 1], dtype=np.int64)

    def __repr__(self) -> str:
        return f"PackedSamples(seq_len={self.seq_len}, samples=[{self.start}, {self.end}))"


def split_train_valid(
    tokens: np.ndarray, seq_len: int, valid_fraction: float
) -> tuple[PackedSamples, PackedSamples | None]:
    """Split into (train, valid): the last ceil(valid_fraction * N) samples validate, at least one.

    Taking the tail keeps the split stable when seq_len is fixed and data is appended elsewhere,
    and keeps validation text contiguous (no leakage through overlapping windows).
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"data.valid_fraction must be in [0, 1), got {valid_fraction}")
    total = num_samples(len(tokens), seq_len)
    if total < 2:
        raise ValueError(
            f"the corpus has {len(tokens)} tokens, which gives {total} sample(s) of data.seq_len={seq_len}; "
            "at least 2 are needed: lower data.seq_len or add more text"
        )
    if valid_fraction == 0.0:
        return PackedSamples(tokens, seq_len), None
    # round() first so that e.g. 0.1 * 30 = 3.0000000000000004 does not ceil to 4.
    n_valid = math.ceil(round(valid_fraction * total, 9))
    n_valid = min(max(1, n_valid), total - 1)
    split = total - n_valid
    return PackedSamples(tokens, seq_len, 0, split), PackedSamples(tokens, seq_len, split, total)
