"""Variable-resolution batches as packed token rows (NaViT / FiTv2 style).

Each image of a batch is cut into its own number of patch tokens (its height and width may
differ); the tokens of consecutive images are packed into rows of at most `row_tokens` tokens.
Every token carries its image's index (`segments`, −1 on padding) and its (row, column) patch
position, so attention masks keep images apart and 2-D RoPE sees each image's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gigatron.models.layers.patches import pixels_to_unit


@dataclass
class PackedBatch:
    """tokens [rows, L, p²·C]; segments [rows, L] (image index, −1 = padding); positions [rows, L, 2];
    row_images [rows, K] (images of each row in order, −1 padded); where[i] = (row, start, count)."""

    tokens: torch.Tensor
    segments: torch.Tensor
    positions: torch.Tensor
    row_images: torch.Tensor
    where: list[tuple[int, int, int]]


def _patches(image: torch.Tensor, patch: int) -> torch.Tensor:
    c, h, w = image.shape
    x = image.reshape(c, h // patch, patch, w // patch, patch).permute(1, 3, 2, 4, 0)
    return x.reshape((h // patch) * (w // patch), patch * patch * c)


def plan_rows(counts: list[int], row_tokens: int | None) -> list[list[int]]:
    """Images per row: consecutive images while they fit in `row_tokens` (None: one image per row)."""
    rows: list[list[int]] = []
    used = 0
    for i, count in enumerate(counts):
        if row_tokens is not None and count > row_tokens:
            raise ValueError(f"an image of {count} patch tokens does not fit in a packed row of {row_tokens} tokens; "
                             "raise the packing length or lower the image size")
        if rows and row_tokens is not None and used + count <= row_tokens:
            rows[-1].append(i)
            used += count
        else:
            rows.append([i])
            used = count
    return rows


def pack_images(images: torch.Tensor, sizes: list[tuple[int, int]], patch: int, row_tokens: int | None,
                dtype: torch.dtype) -> PackedBatch:
    """Pack images [N, C, Hmax, Wmax] whose valid parts are sizes[i] = (h, w) pixels (multiples of `patch`).

    The sizes are Python integers: the caller reads them off the device once per batch, not once
    per image, and the packing is a function of the shapes alone (so it plans under fake tensors)."""
    counts = [(h // patch) * (w // patch) for h, w in sizes]
    rows = plan_rows(counts, row_tokens)
    length = row_tokens if row_tokens is not None else max(counts)
    width = patch * patch * images.shape[1]
    device = images.device
    tokens = torch.zeros(len(rows), length, width, device=device, dtype=dtype)
    segments = torch.full((len(rows), length), -1, device=device, dtype=torch.long)
    positions = torch.zeros(len(rows), length, 2, device=device, dtype=torch.long)
    row_images = torch.full((len(rows), max(len(r) for r in rows)), -1, device=device, dtype=torch.long)
    where: list[tuple[int, int, int]] = [(0, 0, 0)] * len(counts)
    for r, members in enumerate(rows):
        start = 0
        for k, i in enumerate(members):
            h, w = sizes[i]
            count = counts[i]
            tokens[r, start:start + count] = _patches(pixels_to_unit(images[i, :, :h, :w], dtype), patch)
            segments[r, start:start + count] = i
            grid_r, grid_c = torch.meshgrid(torch.arange(h // patch, device=device),
                                            torch.arange(w // patch, device=device), indexing="ij")
            positions[r, start:start + count] = torch.stack([grid_r.flatten(), grid_c.flatten()], dim=1)
            row_images[r, k] = i
            where[i] = (r, start, count)
            start += count
    return PackedBatch(tokens, segments, positions, row_images, where)


def unpack_images(tokens: torch.Tensor, packed: PackedBatch, sizes: list[tuple[int, int]], patch: int,
                  channels: int, height: int, width: int) -> torch.Tensor:
    """Token outputs [rows, L, p²·C] back to images [N, C, height, width], zero outside each valid part."""
    out = tokens.new_zeros(len(packed.where), channels, height, width)
    for i, (r, start, count) in enumerate(packed.where):
        h, w = sizes[i]
        x = tokens[r, start:start + count].reshape(h // patch, w // patch, patch, patch, channels)
        out[i, :, :h, :w] = x.permute(4, 0, 2, 1, 3).reshape(channels, h, w)
    return out
