"""FIT's interleaved blocks (Chen & Li 2023, "FIT: Far-reaching Interleaved Transformers").

Data tokens [b, groups, n, c] and latent tokens [b, groups, m, c_latent]. A block runs local
layers (self-attention within each group), then, if it has global layers: *read* (each group's
latents cross-attend to that group's tokens), global layers (self-attention over all latents of
the image, plus optional condition tokens), and *write* (each group's tokens cross-attend to that
group's latents) — except after the last block. Local cost is O(groups·n²), global O((groups·m)²).

The layer string "(2)4(2)4(2)" reads as blocks of (local)global layers: (2 local, 4 global),
(2 local, 4 global), (2 local, no global).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.attention import MaskedAttention
from gigatron.models.layers.factory import LayerFactory

_BLOCK = re.compile(r"\((\d+)\)(\d*)")


def parse_layers(spec: str) -> list[tuple[int, int]]:
    """"(2)4(2)4(2)" -> [(2, 4), (2, 4), (2, 0)]: (local, global) layers per block.

    Raises ValueError naming the string when it is not a sequence of "(local)global" blocks.
    """
    blocks, position = [], 0
    for match in _BLOCK.finditer(spec):
        if match.start() != position:
            break
        blocks.append((int(match.group(1)), int(match.group(2) or 0)))
        position = match.end()
    if not blocks or position != len(spec):
        raise ValueError(f"FIT layer string {spec!r} is not a sequence of (local)global blocks such as "
                         "'(2)4(2)4(2)'")
    if any(local == 0 and global_ == 0 for local, global_ in blocks):
        raise ValueError(f"FIT layer string {spec!r} has a block with no layers")
    if any(global_ == 0 for _, global_ in blocks[:-1]):
        raise ValueError(f"FIT layer string {spec!r}: only the last block may have no global layers "
                         "(consecutive local layers belong in one block)")
    return blocks


def _attend(core: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    b, lq, width = q.shape
    lk = k.shape[1]
    head_dim = width // heads
    q = q.view(b, lq, heads, head_dim).transpose(1, 2)
    k = k.view(b, lk, heads, head_dim).transpose(1, 2)
    v = v.view(b, lk, heads, head_dim).transpose(1, 2)
    return core(q, k, v, mask).transpose(1, 2).reshape(b, lq, width)


class Attention(nn.Module):
    """Multi-head attention of queries from x over keys/values from `context` (x itself for self-attention)."""

    def __init__(self, factory: LayerFactory, dim: int, heads: int, std: float, out_std: float,
                 context_dim: int | None = None) -> None:
        super().__init__()
        context_dim = context_dim or dim
        self.heads = heads // factory.tp_size
        self.q = factory.column_linear(dim, dim, std=std)
        self.k = factory.column_linear(context_dim, dim, std=std)
        self.v = factory.column_linear(context_dim, dim, std=std)
        self.o = factory.row_linear(dim, dim, std=out_std)
        self.core = MaskedAttention()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        return self.o(_attend(self.core, self.q(x), self.k(context), self.v(context), self.heads, mask))


class MLP(nn.Module):
    """down(gelu(up(x)))."""

    recompute_as = "mlp"

    def __init__(self, factory: LayerFactory, dim: int, hidden: int, std: float, out_std: float) -> None:
        super().__init__()
        self.up = factory.column_linear(dim, hidden, std=std, bias=True)
        self.down = factory.row_linear(hidden, dim, std=out_std, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class TransformerLayer(nn.Module):
    """Pre-norm self-attention and MLP: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, factory: LayerFactory, dim: int, heads: int, mlp_ratio: float, std: float,
                 out_std: float, eps: float) -> None:
        super().__init__()
        self.attn_norm = factory.norm(dim, eps)
        self.attn = Attention(factory, dim, heads, std, out_std)
        self.mlp_norm = factory.norm(dim, eps)
        self.mlp = MLP(factory, dim, int(mlp_ratio * dim), std, out_std)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask=mask)
        return x + self.mlp(self.mlp_norm(x))


class CrossLayer(nn.Module):
    """x + attn(norm(x), norm(context)), then + mlp(norm(x)): FIT's read and write (pre-norm, as in RIN)."""

    def __init__(self, factory: LayerFactory, dim: int, context_dim: int, heads: int, mlp_ratio: float,
                 std: float, out_std: float, eps: float) -> None:
        super().__init__()
        self.query_norm = factory.norm(dim, eps)
        self.context_norm = factory.norm(context_dim, eps)
        self.attn = Attention(factory, dim, heads, std, out_std, context_dim=context_dim)
        self.mlp_norm = factory.norm(dim, eps)
        self.mlp = MLP(factory, dim, int(mlp_ratio * dim), std, out_std)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.query_norm(x), self.context_norm(context))
        return x + self.mlp(self.mlp_norm(x))


def chunk_causal_mask(groups: int, latents_per_group: int, prefix: int, device: torch.device | str) -> torch.Tensor:
    """Global attention mask [prefix + groups·m, same] (True = may attend) for autoregressive FIT.

    Latents of group i see the latents of groups <= i and the prefix (condition) tokens; prefix
    tokens see only each other, so they carry nothing from any group.
    """
    group_of = torch.arange(groups, device=device).repeat_interleave(latents_per_group)
    latents = group_of[None, :] <= group_of[:, None]
    total = prefix + groups * latents_per_group
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[:, :prefix] = True
    mask[prefix:, prefix:] = latents
    return mask


class FITBlock(nn.Module):
    """local layers; then read, global layers, write (each present when the block's spec asks)."""

    recompute_as = "layer"

    def __init__(self, factory: LayerFactory, local: int, global_: int, write: bool, dim: int, latent_dim: int,
                 heads: int, mlp_ratio: float, std: float, out_std: float, eps: float) -> None:
        super().__init__()
        self.local = nn.ModuleList(TransformerLayer(factory, dim, heads, mlp_ratio, std, out_std, eps)
                                   for _ in range(local))
        self.read = self.write = None
        self.globals = nn.ModuleList(TransformerLayer(factory, latent_dim, heads, mlp_ratio, std, out_std, eps)
                                     for _ in range(global_))
        if global_:
            self.read = CrossLayer(factory, latent_dim, dim, heads, mlp_ratio, std, out_std, eps)
            if write:
                self.write = CrossLayer(factory, dim, latent_dim, heads, mlp_ratio, std, out_std, eps)

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor, prefix: torch.Tensor | None,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        b, groups, n, dim = tokens.shape
        m = latents.shape[2]
        flat_tokens = tokens.reshape(b * groups, n, dim)  # groups are batch rows: attention stays inside
        for layer in self.local:
            flat_tokens = layer(flat_tokens)
        if self.read is None:
            return flat_tokens.view(b, groups, n, dim), latents, prefix
        flat_latents = self.read(latents.reshape(b * groups, m, -1), flat_tokens)
        all_latents = flat_latents.view(b, groups * m, -1)
        k = 0 if prefix is None else prefix.shape[1]
        if prefix is not None:
            all_latents = torch.cat([prefix, all_latents], dim=1)
        for layer in self.globals:
            all_latents = layer(all_latents, mask)
        if prefix is not None:
            prefix, all_latents = all_latents[:, :k], all_latents[:, k:]
        latents = all_latents.reshape(b, groups, m, -1)
        if self.write is not None:
            flat_tokens = self.write(flat_tokens, latents.reshape(b * groups, m, -1))
        return flat_tokens.view(b, groups, n, dim), latents, prefix


class FITCore(nn.Module):
    """The stack of FIT blocks of a layer string."""

    def __init__(self, factory: LayerFactory, layers: str, dim: int, latent_dim: int, heads: int,
                 mlp_ratio: float, std: float, out_std: float, eps: float, global_causal: bool = False) -> None:
        super().__init__()
        spec = parse_layers(layers)
        self.global_causal = global_causal
        self.blocks = nn.ModuleList(
            FITBlock(factory, local, global_, i < len(spec) - 1, dim, latent_dim, heads, mlp_ratio, std, out_std, eps)
            for i, (local, global_) in enumerate(spec)
        )

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor, prefix: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, latents) after every block; `prefix` [b, k, c_latent] joins the global layers."""
        mask = None
        if self.global_causal:
            k = 0 if prefix is None else prefix.shape[1]
            mask = chunk_causal_mask(latents.shape[1], latents.shape[2], k, latents.device)
        for block in self.blocks:
            tokens, latents, prefix = block(tokens, latents, prefix, mask)
        return tokens, latents
