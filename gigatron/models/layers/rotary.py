"""Rotary position embedding (Su et al. 2021), half-split layout as in Llama/NeoX."""

from __future__ import annotations

import torch


def rotary_tables(seq_len: int, head_dim: int, base: float, device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape [seq_len, head_dim] for positions 0..seq_len-1."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape [batch, heads, seq, head_dim] by the tables (broadcast over batch/heads)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def rotary_at(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [len(positions), head_dim] for arbitrary (e.g. a context-parallel rank's) positions."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    angles = torch.outer(positions.to(torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary_2d(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """2-D RoPE over (row, column): the first half of each head rotated by row, the second by column.

    x: [batch, heads, seq, head_dim] with head_dim divisible by 4; positions: [batch, seq, 2].
    Relative in both axes: q·k depends only on the row and column offsets of the two tokens.
    """
    half = x.shape[-1] // 2
    parts = []
    for axis, chunk in enumerate((x[..., :half], x[..., half:])):
        cos, sin = rotary_at(positions[..., axis].reshape(-1), half, base)
        shape = (positions.shape[0], 1, positions.shape[1], half)
        parts.append(apply_rotary(chunk, cos.view(shape).to(x.dtype), sin.view(shape).to(x.dtype)))
    return torch.cat(parts, dim=-1)
