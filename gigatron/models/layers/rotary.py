"""Rotary position embedding (Su et al. 2021), half-split layout as in Llama/NeoX."""

from __future__ import annotations

import torch


def rotary_tables(seq_len: int, head_dim: int, base: float, device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape [seq_len, head_dim] for positions 0..seq_len-1."""
    return rotary_at(torch.arange(seq_len, dtype=torch.float32, device=device), head_dim, base)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape [batch, heads, seq, head_dim] by the tables (broadcast over batch/heads)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def rotary_at(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [len(positions), head_dim] for arbitrary (e.g. a context-parallel rank's) positions."""
    if torch.compiler.is_compiling():
        return _rotary_at_op(positions, head_dim, base)
    return _rotary_at(positions, head_dim, base)


def _rotary_at(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    angles = torch.outer(positions.to(torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


@torch.library.custom_op("gigatron::rotary_at", mutates_args=())
def _rotary_at_op(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables as an operator that torch.compile calls rather than traces.

    Traced, inductor fused the tables' cos/sin into the kernels that apply them and computed a sine
    and cosine per element of q and k (batch x heads times the [seq, head_dim] needed), in the
    backward pass too: 8.5 ms per call for a [2, 8, 512, 32] TokenFormer query on 2 cores, which made
    compiled TokenFormer slower than eager. Called, the tables are made once per layer call.
    """
    return _rotary_at(positions, head_dim, base)


@_rotary_at_op.register_fake
def _rotary_at_shapes(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (positions.shape[0], head_dim)
    return (positions.new_empty(shape, dtype=torch.float32), positions.new_empty(shape, dtype=torch.float32))


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
