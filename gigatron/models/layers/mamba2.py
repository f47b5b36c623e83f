"""The Mamba-2 mixer (Dao & Gu 2024), split across TP ranks by heads and groups.

in_proj -> [z, x, B, C, dt]; depthwise causal conv1d + SiLU over xBC; SSD with A = -exp(A_log),
dt = softplus(dt + dt_bias) and a D skip; gated RMSNorm norm(y * silu(z)); out_proj.
Each TP rank owns nheads/tp heads and ngroups/tp groups, so the SSD runs locally and only
out_proj reduces across ranks. Under context parallelism each rank holds part of the sequence: the
conv and SSD inputs go through an all-to-all to the whole sequence for 1/cp of the rank's heads and
groups, and the SSD output back (Megatron's scheme), which is exact because both are per channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.causal_conv import causal_conv1d, causal_conv1d_step
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.gated_norm import GatedGroupRMSNorm
from gigatron.models.layers.init import mark_init, no_weight_decay
from gigatron.models.layers.ssd import ssd, ssd_step


@dataclass
class Mamba2Shape:
    """Sizes of one Mamba-2 mixer (mamba_ssm defaults)."""

    hidden: int
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    a_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4

    @property
    def d_inner(self) -> int:
        """Channels of x (and z)."""
        return self.expand * self.hidden

    @property
    def nheads(self) -> int:
        """SSD heads."""
        return self.d_inner // self.headdim


@dataclass
class Mamba2Cache:
    """Decode state of one layer: the last d_conv inputs of the conv, and the SSM state."""

    conv: torch.Tensor  # [batch, local conv channels, d_conv]
    ssm: torch.Tensor  # [batch, local heads, headdim, d_state]


class Mamba2Mixer(nn.Module):
    """One Mamba-2 mixer; `forward` for training, `forward_cached` for generation."""

    recompute_as = "mamba"

    def __init__(self, factory: LayerFactory, shape: Mamba2Shape, std: float, out_std: float) -> None:
        super().__init__()
        s, tp = shape, factory.tp_size
        self.shape = s
        self.local_heads, self.local_groups = s.nheads // tp, s.ngroups // tp
        self.local_inner = s.d_inner // tp
        self.local_state_width = self.local_groups * s.d_state
        conv_segments = [s.d_inner, s.ngroups * s.d_state, s.ngroups * s.d_state]
        self.in_proj = factory.column_linear(s.hidden, [s.d_inner, *conv_segments, s.nheads], std=std)
        conv_dim = sum(conv_segments)
        bound = 1.0 / s.d_conv**0.5  # PyTorch's default Conv1d init for a depthwise kernel
        self.conv_weight = mark_init(factory.parameter((conv_dim, s.d_conv), shard_dim=0, segments=conv_segments),
                                     "uniform", -bound, bound)
        self.conv_bias = mark_init(factory.parameter((conv_dim,), shard_dim=0, segments=conv_segments),
                                   "uniform", -bound, bound)
        self.dt_bias = no_weight_decay(mark_init(factory.parameter((s.nheads,), shard_dim=0), "dt_bias",
                                           s.dt_min, s.dt_max, s.dt_init_floor))
        self.A_log = no_weight_decay(mark_init(factory.parameter((s.nheads,), shard_dim=0), "a_log", *s.a_init_range))
        self.D = no_weight_decay(mark_init(factory.parameter((s.nheads,), shard_dim=0), "ones"))
        self.norm = GatedGroupRMSNorm(factory, s.d_inner, s.d_inner // s.ngroups)
        self.out_proj = factory.row_linear(s.d_inner, s.hidden, std=out_std)
        self.exchange = factory.sequence_exchange()  # None unless context parallel

    def _split(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        conv_width = self.local_inner + 2 * self.local_state_width
        return torch.split(zxbcdt, [self.local_inner, conv_width, self.local_heads], dim=-1)

    def _ssm_inputs(self, xbc: torch.Tensor, dt: torch.Tensor, share: int = 1, heads: torch.Tensor | None = None):
        """x, dt, A, B, C from the conv output; `share` > 1 with `heads`: a CP rank's 1/share of the heads."""
        inner, width = self.local_inner // share, self.local_state_width // share
        x, b, c = torch.split(xbc, [inner, width, width], dim=-1)
        lead = x.shape[:-1]
        x = x.reshape(*lead, self.local_heads // share, self.shape.headdim)
        b = b.reshape(*lead, self.local_groups // share, self.shape.d_state)
        c = c.reshape(*lead, self.local_groups // share, self.shape.d_state)
        dt_bias, a_log = (self.dt_bias, self.A_log) if heads is None else (self.dt_bias[heads], self.A_log[heads])
        dt = F.softplus(dt.float() + dt_bias.float())
        a = -torch.exp(a_log.float())
        return x, dt, a, b, c

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.exchange is not None:
            return self._forward_context_parallel(u)
        out, _ = self._forward(u, None)
        return out

    def _forward_context_parallel(self, u: torch.Tensor) -> torch.Tensor:
        ex, share = self.exchange, self.exchange.size
        batch = u.shape[0]
        z, xbc, dt = self._split(self.in_proj(u))
        segments = [self.local_inner, self.local_state_width, self.local_state_width]
        channels = ex.channel_index(segments, u.device)
        heads = ex.channel_index([self.local_heads], u.device)
        xbc = ex.to_channels(xbc, segments)  # [b, L, conv channels / cp], the whole sequence in order
        dt = ex.to_channels(dt, [self.local_heads])
        conv = causal_conv1d(xbc.transpose(1, 2), self.conv_weight[channels], self.conv_bias[channels],
                             activation="silu")
        x, dt, a, b, c = self._ssm_inputs(conv.transpose(1, 2), dt, share, heads)
        y, _ = ssd(x, dt, a, b, c, self.shape.chunk_size, D=self.D[heads].float())
        y = ex.to_sequence(y.reshape(batch, y.shape[1], self.local_inner // share).to(u.dtype))
        return self.out_proj(self.norm(y, z))

    def _forward(self, u: torch.Tensor, cache: Mamba2Cache | None) -> tuple[torch.Tensor, torch.Tensor]:
        z, xbc, dt = self._split(self.in_proj(u))
        batch, seq = xbc.shape[:2]  # the whole sequence, also when u holds a sequence-parallel shard of it
        xbc_t = xbc.transpose(1, 2)
        if cache is not None:  # continue the convolution from the cached inputs
            xbc_t = torch.cat([cache.conv[:, :, 1:].to(xbc_t.dtype), xbc_t], dim=-1)
        conv = causal_conv1d(xbc_t, self.conv_weight, self.conv_bias, activation="silu")
        if cache is not None:
            # Sliced only here: even a slice that keeps everything gets a backward that copies the
            # gradient into a fresh [b, d, l] tensor, the other layout from the conv's, ~4x slower after.
            conv = conv[..., -seq:]
            history = torch.cat([cache.conv.to(xbc.dtype), xbc.transpose(1, 2)], dim=-1)
            cache.conv = history[..., -self.shape.d_conv:].contiguous()
        x, dt, a, b, c = self._ssm_inputs(conv.transpose(1, 2), dt)
        y, state = ssd(x, dt, a, b, c, self.shape.chunk_size, D=self.D.float(),
                       initial_state=None if cache is None else cache.ssm)
        if cache is not None:
            cache.ssm = state
        y = y.reshape(batch, seq, self.local_inner).to(u.dtype)
        return self.out_proj(self.norm(y, z)), state

    def new_cache(self, batch: int, device: torch.device | str, dtype: torch.dtype) -> Mamba2Cache:
        """Zero conv and SSM state (the SSM state is kept in fp32)."""
        conv_dim = self.local_inner + 2 * self.local_state_width
        return Mamba2Cache(
            conv=torch.zeros(batch, conv_dim, self.shape.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.local_heads, self.shape.headdim, self.shape.d_state, device=device,
                            dtype=torch.float32),
        )

    def forward_cached(self, u: torch.Tensor, cache: Mamba2Cache) -> torch.Tensor:
        """Process new tokens after the cached ones; one token costs O(1) regardless of context length."""
        if u.shape[1] > 1:
            return self._forward(u, cache)[0]
        z, xbc, dt = self._split(self.in_proj(u[:, 0]))
        conv, cache.conv = causal_conv1d_step(cache.conv, xbc, self.conv_weight, self.conv_bias, activation="silu")
        x, dt, a, b, c = self._ssm_inputs(conv, dt)
        y, cache.ssm = ssd_step(cache.ssm, x, dt, a, b, c, D=self.D.float())
        y = y.reshape(u.shape[0], 1, self.local_inner).to(u.dtype)
        return self.out_proj(self.norm(y, z[:, None]))
