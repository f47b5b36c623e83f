"""Which tokens of a sequence each context-parallel rank holds.

contiguous  rank r holds the r-th of cp equal pieces.
zigzag      the sequence is cut into 2·cp chunks and rank r holds chunks r and 2·cp−1−r, so that
            under a causal mask every rank has the same amount of work (the early chunk sees few
            keys, the late one many).
Tokens keep their global positions (RoPE and the causal mask use them), so no rank needs the
sequence in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SequenceLayout:
    """The split of sequences of any length over `size` ranks; `rank` is this process's place."""

    rank: int
    size: int
    zigzag: bool = True

    @property
    def pieces(self) -> int:
        """Equal pieces a sequence is cut into."""
        return 2 * self.size if self.zigzag else self.size

    def check_length(self, length: int, what: str = "sequence length") -> None:
        """Raise unless a sequence of `length` tokens splits evenly."""
        if length % self.pieces:
            kind = "2·cp (zigzag)" if self.zigzag else "cp"
            raise ValueError(f"{what} {length} is not divisible by {kind} = {self.pieces}; pad it (see "
                             "`pad_to_multiple`) or choose a length that is")

    def positions(self, length: int, rank: int | None = None, device: torch.device | str | None = None
                  ) -> torch.Tensor:
        """Global positions of the tokens rank `rank` (default: ours) holds of a `length`-token sequence."""
        self.check_length(length)
        rank = self.rank if rank is None else rank
        chunk = length // self.pieces
        starts = [rank, 2 * self.size - 1 - rank] if self.zigzag else [rank]
        return torch.cat([torch.arange(s * chunk, (s + 1) * chunk, device=device) for s in starts])

    def local_positions(self, local_length: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Positions of our tokens, given how many we hold."""
        return self.positions(local_length * self.size, device=device)

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Our tokens of a full sequence tensor (along `dim`)."""
        index = self.positions(x.shape[dim], device=x.device)
        return x.index_select(dim, index)

    def unshard(self, pieces: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
        """The full sequence from every rank's tokens (rank order), e.g. after an all-gather."""
        local = pieces[0].shape[dim]
        order = torch.cat([self.positions(local * self.size, rank=r) for r in range(self.size)])
        out = torch.empty_like(torch.cat(pieces, dim=dim))
        out.index_copy_(dim, order.to(out.device), torch.cat(pieces, dim=dim))
        return out


def pad_to_multiple(x: torch.Tensor, multiple: int, dim: int = 1) -> tuple[torch.Tensor, int]:
    """`x` padded with zeros along `dim` to a multiple of `multiple`, and the original length.

    Attention over the padded sequence is exact for the real tokens when the original length is
    passed as `key_limit` (padded keys are masked); padded queries are dropped afterwards.
    """
    length = x.shape[dim]
    extra = -length % multiple
    if extra == 0:
        return x, length
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim), length
