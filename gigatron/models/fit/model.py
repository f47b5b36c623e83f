"""FIT (Chen & Li 2023) as an image encoder and as a RIN-style rectified-flow diffusion decoder.

Encoder (`fit`): image -> patch tokens grouped as sub-images (`layers/patches.py`) + a position
embedding shared by groups; learned latents per group, told their group's place by a fixed 2-D
sine-cosine embedding (so one model runs at any image size); FIT blocks (`layers/fit_blocks.py`);
mean of the final tokens (or latents) -> norm -> class logits.

Decoder (`fit_diffusion`, after RIN, Jabri et al. 2023): the data tokens are the noisy image's
pixel patches; a time token and a class token join the latents in every global layer; latent
self-conditioning feeds the latents of a first, gradient-free pass into the second (training) or
of the previous sampling step (sampling); the final tokens predict each patch's velocity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.fit.config import FITConfig, FITDiffusionConfig
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.fit_blocks import FITCore, parse_layers
from gigatron.models.layers.init import mark_init, scaled_std
from gigatron.models.layers.patches import GroupedPatchEmbedding, group_grid, sincos_2d, unpatchify_groups
from gigatron.models.rectified_flow import euler_sample, guided
from gigatron.models.registry import ModelSpec


class FITBackbone(nn.Module):
    """Patch embedding, latents and FIT blocks shared by the encoder and the decoder."""

    def __init__(self, cfg: FITConfig, factory: LayerFactory) -> None:
        super().__init__()
        self.cfg = cfg
        blocks = parse_layers(cfg.layers)
        depth = sum(local + global_ + (2 if global_ else 0) for local, global_ in blocks)
        std, out_std = cfg.init_std, scaled_std(cfg.init_std, depth)
        self.embed = GroupedPatchEmbedding(factory, cfg.channels, cfg.patch_size, cfg.group_size, cfg.hidden_size, std)
        self.token_position = mark_init(factory.parameter((cfg.group_tokens, cfg.hidden_size)), "normal", std)
        self.latent_init = mark_init(factory.parameter((cfg.latents_per_group, cfg.latent_dim)), "normal", std)
        self.core = FITCore(factory, cfg.layers, cfg.hidden_size, cfg.latent_dim, cfg.num_heads, cfg.mlp_ratio,
                            std, out_std, cfg.norm_eps, cfg.global_causal)

    def initial(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(data tokens [b, G, n, c], initial latents [b, G, m, c_latent]) of images [b, C, H, W]."""
        cfg = self.cfg
        rows, cols = group_grid(images.shape[2], images.shape[3], cfg.patch_size, cfg.group_size)
        tokens = self.embed(images) + self.token_position
        where = sincos_2d(rows, cols, cfg.latent_dim, tokens.device).to(tokens.dtype)
        latents = self.latent_init[None, None] + where[None, :, None, :]
        return tokens, latents.expand(images.shape[0], -1, -1, -1)

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor,
                prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.core(tokens, latents, prefix)


class FITEncoder(nn.Module):
    """Images (uint8 or [-1, 1] floats) [b, C, H, W] -> class logits [b, num_classes]."""

    def __init__(self, cfg: FITConfig, factory: LayerFactory) -> None:
        super().__init__()
        self.backbone = FITBackbone(cfg, factory)
        self.pool_latents = parse_layers(cfg.layers)[-1][1] > 0  # no write after the last block
        width = cfg.latent_dim if self.pool_latents else cfg.hidden_size
        self.norm = factory.norm(width, cfg.norm_eps)
        self.head = factory.column_linear(width, cfg.num_classes, std=cfg.init_std, bias=True)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled representation [b, width]: mean of the final tokens (or latents)."""
        tokens, latents = self.backbone(*self.backbone.initial(images))
        final = latents if self.pool_latents else tokens
        return self.norm(final.mean(dim=(1, 2)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [b, dim] of times t in [0, 1] (scaled by 1000, as in DDPM/DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class FITDiffusion(nn.Module):
    """Velocity prediction v(x_t, t, label) with FIT over pixel patches (RIN-style decoder)."""

    TIME_FEATURES = 256

    def __init__(self, cfg: FITDiffusionConfig, factory: LayerFactory) -> None:
        super().__init__()
        self.cfg = cfg
        c, std = cfg.latent_dim, cfg.init_std
        self.backbone = FITBackbone(cfg, factory)
        self.time_in = factory.column_linear(self.TIME_FEATURES, c, std=std, bias=True)
        self.time_out = factory.row_linear(c, c, std=std, bias=True)
        # Index num_classes is "no condition": dropped for guidance, or an unconditional model.
        self.label_embedding = factory.embedding(cfg.num_classes + 1, c, std=std)
        self.feedback_norm = factory.norm(c, cfg.norm_eps)
        self.feedback = factory.column_linear(c, c, std=std, bias=True)
        self.out_norm = factory.norm(cfg.hidden_size, cfg.norm_eps)
        self.out = factory.column_linear(cfg.hidden_size, cfg.patch_size ** 2 * cfg.channels, std=std, bias=True)

    def _prefix(self, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(t, self.TIME_FEATURES).to(self.time_in.weight.dtype)
        time = self.time_out(F.silu(self.time_in(features)))
        label = self.label_embedding(torch.where(labels < 0, self.cfg.num_classes, labels))
        return torch.stack([time, label.to(time.dtype)], dim=1)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(velocity [b, C, H, W], final latents) given the latents of a previous pass (None: zeros)."""
        cfg = self.cfg
        tokens, latents = self.backbone.initial(x_t)
        if cfg.self_condition:
            previous = torch.zeros_like(latents) if previous is None else previous
            latents = latents + self.feedback(self.feedback_norm(previous))
        tokens, latents = self.backbone(tokens, latents, self._prefix(t, labels))
        patches = self.out(self.out_norm(tokens))
        velocity = unpatchify_groups(patches, cfg.patch_size, cfg.group_size, x_t.shape[2], x_t.shape[3], cfg.channels)
        return velocity, latents

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, condition: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training call (see the rectified-flow task): condition["label"] (−1: none) and optionally
        condition["self_condition"]: flagged samples first get a gradient-free pass whose latents
        condition the second (RIN); the others are conditioned on zeros."""
        labels, self_condition = condition["label"], condition.get("self_condition")
        previous = None
        if self.cfg.self_condition and self_condition is not None and bool(self_condition.any()):
            with torch.no_grad():
                _, first = self.predict(x_t, t, labels, None)
            previous = first * self_condition.to(first.dtype)[:, None, None, None]
        return self.predict(x_t, t, labels, previous)[0]

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, labels: torch.Tensor, steps: int, guidance: float = 1.0,
               shift: float = 1.0) -> torch.Tensor:
        """Images in [-1, 1] from noise [b, C, H, W] by Euler steps with classifier-free guidance.

        Each branch (conditional, unconditional) carries its own latents from step to step.
        """
        state: dict[bool, torch.Tensor | None] = {True: None, False: None}
        unconditional = torch.full_like(labels, -1)

        def velocity(x: torch.Tensor, t: torch.Tensor, conditioned: bool) -> torch.Tensor:
            v, state[conditioned] = self.predict(x, t, labels if conditioned else unconditional, state[conditioned])
            return v

        return euler_sample(guided(velocity, guidance), noise, steps, shift).clamp(-1.0, 1.0)


def _count(model_cls: type, cfg: FITConfig) -> int:
    return sum(p.numel() for p in model_cls(cfg, LayerFactory(device="meta")).parameters())


def tokens_per_image(cfg: FITConfig, image_size: int) -> int:
    """Patch tokens of a square image."""
    return (image_size // cfg.patch_size) ** 2


def _layer_flops(width: int, mlp_ratio: float, queries: int, keys: int, context_width: int | None = None) -> float:
    """Forward FLOPs of one attention + MLP layer over `queries` tokens attending to `keys`."""
    context_width = context_width or width
    projections = 2 * queries * (2 * width * width) + 2 * keys * (2 * context_width * width)  # q, o; k, v
    scores = 4 * queries * keys * width  # QK^T and AV
    mlp = 2 * queries * 2 * width * int(mlp_ratio * width)
    return projections + scores + mlp


def flops_per_token(cfg: FITConfig, tokens: int) -> float:
    """Model FLOPs (forward + backward = 3x forward) per data token of an image of `tokens` tokens.

    Attention counts the full score matrices inside groups and over latents, as the LM families do.
    """
    n, m, c, cl = cfg.group_tokens, cfg.latents_per_group, cfg.hidden_size, cfg.latent_dim
    groups = max(1, tokens // n)
    latents = groups * m
    forward = 2 * tokens * cfg.patch_size ** 2 * cfg.channels * c  # patch embedding
    blocks = parse_layers(cfg.layers)
    for i, (local, global_) in enumerate(blocks):
        forward += local * groups * _layer_flops(c, cfg.mlp_ratio, n, n)
        if global_:
            forward += groups * _layer_flops(cl, cfg.mlp_ratio, m, n, c)  # read
            forward += global_ * _layer_flops(cl, cfg.mlp_ratio, latents, latents)
            if i < len(blocks) - 1:
                forward += groups * _layer_flops(c, cfg.mlp_ratio, n, m, cl)  # write
    return 3.0 * forward / tokens


def _tokens_per_sample(model_cfg: FITConfig, run) -> int:
    return tokens_per_image(model_cfg, run.images.image_size)


SPEC = ModelSpec(
    family="fit",
    config_cls=FITConfig,
    layer_recipes=None,
    build=FITEncoder,
    flops_per_token=flops_per_token,
    num_params=lambda cfg: _count(FITEncoder, cfg),
    task="classify",
    tokens_per_sample=_tokens_per_sample,
)

DIFFUSION_SPEC = ModelSpec(
    family="fit_diffusion",
    config_cls=FITDiffusionConfig,
    layer_recipes=None,
    build=FITDiffusion,
    flops_per_token=flops_per_token,
    num_params=lambda cfg: _count(FITDiffusion, cfg),
    task="rectified_flow",
    tokens_per_sample=_tokens_per_sample,
)
