"""Images as groups of patch tokens: the data layout of FIT (and of any grouped vision transformer).

An H x W image cut into p x p patches is a grid of (H/p) x (W/p) patch tokens; FIT groups them as
sub-images of g x g patches, so tokens are [batch, groups, g*g, p*p*channels], groups in raster
order over the image and tokens in raster order within their group.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gigatron.models.layers.factory import LayerFactory


def group_grid(height: int, width: int, patch: int, group: int) -> tuple[int, int]:
    """(rows, columns) of groups of an image; raises naming the sizes when the image does not divide."""
    side = patch * group
    if height % side or width % side:
        raise ValueError(f"an image of {height}x{width} pixels does not divide into groups of {group}x{group} "
                         f"patches of {patch}x{patch} pixels ({side}x{side} pixels per group)")
    return height // side, width // side


def patchify_groups(images: torch.Tensor, patch: int, group: int) -> torch.Tensor:
    """[b, c, H, W] -> [b, groups, group², patch²·c] (pixel order within a patch: row, column, channel)."""
    b, c, height, width = images.shape
    rows, cols = group_grid(height, width, patch, group)
    x = images.reshape(b, c, rows, group, patch, cols, group, patch)
    # b, group row, group column, patch row in group, patch column in group, pixel row, pixel column, channel
    x = x.permute(0, 2, 5, 3, 6, 4, 7, 1)
    return x.reshape(b, rows * cols, group * group, patch * patch * c)


def unpatchify_groups(tokens: torch.Tensor, patch: int, group: int, height: int, width: int,
                      channels: int) -> torch.Tensor:
    """The inverse of `patchify_groups`: [b, groups, group², patch²·c] -> [b, c, H, W]."""
    b = tokens.shape[0]
    rows, cols = group_grid(height, width, patch, group)
    x = tokens.reshape(b, rows, cols, group, group, patch, patch, channels)
    x = x.permute(0, 7, 1, 3, 5, 2, 4, 6)
    return x.reshape(b, channels, height, width)


def sincos_2d(rows: int, cols: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding [rows*cols, dim] (MAE's): half the channels per axis."""
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float64) / quarter)
    y, x = torch.meshgrid(torch.arange(rows, device=device, dtype=torch.float64),
                          torch.arange(cols, device=device, dtype=torch.float64), indexing="ij")
    parts = []
    for axis in (y.flatten(), x.flatten()):
        angles = axis[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def pixels_to_unit(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 pixels 0..255 -> `dtype` values in [-1, 1]; float input is taken as already scaled."""
    if images.dtype == torch.uint8:
        return images.to(dtype).div_(127.5).sub_(1.0)
    return images.to(dtype)


class GroupedPatchEmbedding(nn.Module):
    """Pixels -> data tokens [b, groups, group², hidden], computed one row of groups at a time.

    Each row's float pixels exist only while that row is embedded: under autograd each row is
    recomputed from the (uint8) input in the backward pass, so no float copy of a full-resolution
    image is ever held, and memory beyond the input grows with the tokens alone.
    """

    def __init__(self, factory: LayerFactory, channels: int, patch: int, group: int, hidden: int, std: float) -> None:
        super().__init__()
        self.patch, self.group, self.channels = patch, group, channels
        self.proj = factory.column_linear(patch * patch * channels, hidden, std=std, bias=True)

    def _row(self, slab: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify_groups(pixels_to_unit(slab, self.proj.weight.dtype), self.patch, self.group))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rows, _ = group_grid(images.shape[2], images.shape[3], self.patch, self.group)
        side = self.patch * self.group
        recompute = torch.is_grad_enabled() and self.proj.weight.requires_grad
        out = []
        for r in range(rows):
            slab = images[:, :, r * side:(r + 1) * side, :]
            out.append(checkpoint(self._row, slab, use_reentrant=False) if recompute else self._row(slab))
        return torch.cat(out, dim=1)

