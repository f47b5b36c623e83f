"""The Mamba-1 mixer (Gu & Dao 2023): selective scan with input-dependent dt, B, C.

in_proj -> [x, z]; depthwise causal conv1d + SiLU over x; x_proj -> [dt_low, B, C]; dt_proj;
selective scan with A = -exp(A_log) and a D skip; y * silu(z); out_proj. Under TP each rank owns
d_inner/tp channels; x_proj is row-parallel (dt_low, B, C need every channel), dt_proj column-parallel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.causal_conv import causal_conv1d, causal_conv1d_step
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import mark_init, no_weight_decay
from gigatron.models.layers.selective_scan import selective_scan, selective_state_step


@dataclass
class Mamba1Shape:
    """Sizes of one Mamba-1 mixer (mamba_ssm defaults)."""

    hidden: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(hidden / 16)
    chunk_size: int = 64
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4

    @property
    def d_inner(self) -> int:
        """Scanned channels."""
        return self.expand * self.hidden

    @property
    def rank(self) -> int:
        """Width of the low-rank dt projection."""
        return self.dt_rank or math.ceil(self.hidden / 16)


@dataclass
class Mamba1Cache:
    """Decode state: last d_conv conv inputs and the SSM state."""

    conv: torch.Tensor  # [batch, local d_inner, d_conv]
    ssm: torch.Tensor  # [batch, local d_inner, d_state]


class Mamba1Mixer(nn.Module):
    """One Mamba-1 mixer; `forward` for training, `forward_cached` for generation."""

    recompute_as = "mamba"

    def __init__(self, factory: LayerFactory, shape: Mamba1Shape, std: float, out_std: float) -> None:
        super().__init__()
        s, tp = shape, factory.tp_size
        self.shape, self.local_inner = s, s.d_inner // tp
        self.in_proj = factory.column_linear(s.hidden, [s.d_inner, s.d_inner], std=std)
        bound = 1.0 / s.d_conv**0.5
        self.conv_weight = mark_init(factory.parameter((s.d_inner, s.d_conv), shard_dim=0), "uniform", -bound, bound)
        self.conv_bias = mark_init(factory.parameter((s.d_inner,), shard_dim=0), "uniform", -bound, bound)
        # inside the mixer: whole sequence in and out, also under sequence parallelism
        self.x_proj = factory.row_linear(s.d_inner, s.rank + 2 * s.d_state, std=std, to_residual=False)
        # dt_proj as in mamba_ssm: weight ~ U(+-rank^-0.5), bias = softplus^-1(dt).
        self.dt_proj = factory.column_linear(s.rank, s.d_inner, std=std, bias=True, from_residual=False)
        mark_init(self.dt_proj.weight, "uniform", -(s.rank**-0.5), s.rank**-0.5)
        mark_init(self.dt_proj.bias, "dt_bias", s.dt_min, s.dt_max, s.dt_init_floor)
        no_weight_decay(self.dt_proj.bias)
        # A = -(1..d_state) per channel (S4D-real), stored as log.
        self.A_log = no_weight_decay(factory.parameter((s.d_inner, s.d_state), shard_dim=0))
        mark_init(self.A_log, "a_log_s4d_real")
        self.D = no_weight_decay(mark_init(factory.parameter((s.d_inner,), shard_dim=0), "ones"))
        self.out_proj = factory.row_linear(s.d_inner, s.hidden, std=out_std)

    def _scan_inputs(self, x: torch.Tensor):
        """x: [b, l, d_local] after the conv -> delta [b, d, l], B, C [b, n, l]."""
        s = self.shape
        dt_low, b, c = torch.split(self.x_proj(x), [s.rank, s.d_state, s.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt_low).float())
        return delta.transpose(1, 2), b.float().transpose(1, 2), c.float().transpose(1, 2)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self._forward(u, None)

    def _forward(self, u: torch.Tensor, cache: Mamba1Cache | None) -> torch.Tensor:
        x, z = self.in_proj(u).chunk(2, dim=-1)
        seq = x.shape[1]  # the whole sequence, also when u holds a sequence-parallel shard of it
        x_t = x.transpose(1, 2)
        if cache is not None:
            x_t = torch.cat([cache.conv[:, :, 1:].to(x_t.dtype), x_t], dim=-1)
            cache.conv = torch.cat([cache.conv.to(x.dtype), x.transpose(1, 2)], dim=-1)[..., -self.shape.d_conv:]
        conv = causal_conv1d(x_t, self.conv_weight, self.conv_bias, activation="silu")
        if cache is not None:  # not sliced otherwise: see Mamba2Mixer._forward
            conv = conv[..., -seq:]
        delta, b, c = self._scan_inputs(conv.transpose(1, 2))
        a = -torch.exp(self.A_log.float())
        y, state = selective_scan(conv.float(), delta, a, b, c, self.shape.chunk_size, D=self.D.float(),
                                  initial_state=None if cache is None else cache.ssm)
        if cache is not None:
            cache.ssm = state
        y = y.transpose(1, 2).to(u.dtype) * F.silu(z)
        return self.out_proj(y)

    def new_cache(self, batch: int, device: torch.device | str, dtype: torch.dtype) -> Mamba1Cache:
        """Zero conv and SSM state (the SSM state is kept in fp32)."""
        return Mamba1Cache(
            conv=torch.zeros(batch, self.local_inner, self.shape.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.local_inner, self.shape.d_state, device=device, dtype=torch.float32),
        )

    def forward_cached(self, u: torch.Tensor, cache: Mamba1Cache) -> torch.Tensor:
        """Process new tokens after the cached ones; one token costs O(1) regardless of context length."""
        if u.shape[1] > 1:
            return self._forward(u, cache)
        x, z = self.in_proj(u[:, 0]).chunk(2, dim=-1)
        conv, cache.conv = causal_conv1d_step(cache.conv, x, self.conv_weight, self.conv_bias, activation="silu")
        delta, b, c = self._scan_inputs(conv[:, None])
        a = -torch.exp(self.A_log.float())
        y, cache.ssm = selective_state_step(cache.ssm, conv.float(), delta[..., 0], a, b[..., 0], c[..., 0],
                                            D=self.D.float())
        return self.out_proj((y.to(u.dtype) * F.silu(z))[:, None])
