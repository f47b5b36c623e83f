"""A diffusion text-to-image transformer (`t2i`): DiT blocks with cross-attention to a text encoder.

After "On the Scalability of Diffusion-based Text-to-Image Generation" (Li et al.: transformer
T2I models scaled in depth and width) and FiTv2 (flexible resolution): images of any size and
aspect ratio become patch tokens packed into rows (`layers/packing.py`) with 2-D RoPE, attention
confined to each image; DiT blocks (`layers/dit_blocks.py`) with QK-norm, SwiGLU, cross-attention
to the caption's text tokens and AdaLN-LoRA conditioning on time + pooled text. The model predicts
the rectified-flow velocity (`models/rectified_flow.py`), in pixel space (3 channels) or in the
latent space of a user's VAE (`channels` = its latent channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.fit.model import timestep_embedding
from gigatron.models.layers.dit_blocks import DiTBlock, modulate
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import mark_init, scaled_std
from gigatron.models.layers.packing import pack_images, unpack_images
from gigatron.models.layers.text_encoder import FrozenTextEncoder, TextEncoder
from gigatron.models.rectified_flow import euler_sample, guided
from gigatron.models.registry import ModelSpec
from gigatron.models.t2i.config import T2IConfig


class T2IModel(nn.Module):
    """Velocity v(x_t, t, caption) for a batch of (possibly differently sized) images."""

    TIME_FEATURES = 256

    def __init__(self, cfg: T2IConfig, factory: LayerFactory) -> None:
        super().__init__()
        self.cfg = cfg
        h, std = cfg.hidden_size, cfg.init_std
        out_std = scaled_std(std, cfg.num_layers)
        if cfg.text_encoder is not None:
            self.text = FrozenTextEncoder(factory, cfg.text_encoder, cfg.text_hidden_size, std)
        else:
            self.text = TextEncoder(factory, cfg.vocab_size, cfg.caption_len, cfg.text_hidden_size, cfg.text_layers,
                                    cfg.text_heads, std, scaled_std(std, max(1, cfg.text_layers)), cfg.norm_eps)
        self.patch_in = factory.replicated_linear(cfg.patch_features, h, std=std, bias=True)
        self.time_in = factory.replicated_linear(self.TIME_FEATURES, h, std=std, bias=True)
        self.time_out = factory.replicated_linear(h, h, std=std, bias=True)
        self.text_pool = factory.replicated_linear(cfg.text_hidden_size, h, std=std, bias=True)
        self.shared_modulation = factory.replicated_linear(h, 6 * h, std=std, bias=True)
        mark_init(self.shared_modulation.weight, "zeros")  # DiT's adaLN-Zero: blocks start as identity
        self.blocks = nn.ModuleList(
            DiTBlock(factory, h, cfg.num_heads, cfg.ffn_size, cfg.text_hidden_size, cfg.adaln_lora_rank,
                     cfg.rope_base, std, out_std, cfg.norm_eps) for _ in range(cfg.num_layers))
        self.final_norm = factory.norm(h, cfg.norm_eps)
        self.final_modulation = factory.replicated_linear(h, 2 * h, std=std, bias=True)
        mark_init(self.final_modulation.weight, "zeros")
        self.patch_out = factory.replicated_linear(h, cfg.patch_features, std=std, bias=True)
        mark_init(self.patch_out.weight, "zeros")

    def _condition(self, t: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(t, self.TIME_FEATURES).to(self.time_in.weight.dtype)
        return self.time_out(F.silu(self.time_in(features))) + self.text_pool(pooled)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, condition: dict[str, torch.Tensor]) -> torch.Tensor:
        """x_t [N, C, Hmax, Wmax] (valid parts condition["size"] = (h, w) per image, default the whole),
        t [N], condition["caption"] [N, T] token ids padded with −1. Returns v in x_t's layout, zero
        outside each image."""
        cfg = self.cfg
        n, channels, height, width = x_t.shape
        given = condition.get("size")
        sizes = [(height, width)] * n if given is None else [(int(h), int(w)) for h, w in given.tolist()]
        dtype = self.patch_in.weight.dtype
        packed = pack_images(x_t, sizes, cfg.patch_size, cfg.pack_tokens, dtype)
        text, text_valid, pooled = self.text(condition["caption"])
        cond = F.silu(self._condition(t, pooled))  # [N, h]
        segments = packed.segments
        real = segments >= 0
        index = segments.clamp(min=0)
        token_cond = cond[index]  # each token's image's condition
        shared = self.shared_modulation(token_cond)
        # Self-attention within an image; padding tokens see themselves only (never a real token).
        self_mask = (segments[:, :, None] == segments[:, None, :]) & real[:, None, :]
        self_mask |= torch.eye(segments.shape[1], dtype=torch.bool, device=x_t.device)
        # Cross-attention: a row's keys are the text tokens of its images, each token sees its own.
        row_images = packed.row_images
        keys_image = row_images.clamp(min=0)
        row_text = text[keys_image].flatten(1, 2)  # [rows, K·(T+1), c]
        key_owner = row_images[:, :, None].expand(-1, -1, text.shape[1]).flatten(1)
        key_valid = text_valid[keys_image].flatten(1) & (key_owner >= 0)
        cross_mask = (segments[:, :, None] == key_owner[:, None, :]) & key_valid[:, None, :]
        cross_mask = torch.where(real[:, :, None], cross_mask, key_valid[:, None, :])
        x = self.patch_in(packed.tokens)
        for block in self.blocks:
            x = block(x, token_cond, shared, self_mask, packed.positions, row_text, cross_mask)
        shift, scale = self.final_modulation(token_cond).chunk(2, dim=-1)
        out = self.patch_out(modulate(self.final_norm(x), shift, scale))
        return unpack_images(out, packed, sizes, cfg.patch_size, channels, height, width)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, captions: torch.Tensor, steps: int, guidance: float = 1.0,
               shift: float = 1.0) -> torch.Tensor:
        """Images (or latents) from noise [N, C, H, W] for captions [N, T] by Euler steps with CFG."""
        empty = torch.full_like(captions, -1)

        def velocity(x: torch.Tensor, t: torch.Tensor, conditioned: bool) -> torch.Tensor:
            return self(x, t, {"caption": captions if conditioned else empty})

        return euler_sample(guided(velocity, guidance), noise, steps, shift)


def _count(cfg: T2IConfig) -> int:
    return sum(p.numel() for p in T2IModel(cfg, LayerFactory(device="meta")).parameters())


def flops_per_token(cfg: T2IConfig, tokens: int) -> float:
    """Model FLOPs (forward + backward) per image token of an image of `tokens` patch tokens.

    6 × the block and patch matmul parameters, plus self-attention scores over the image (12·L·h·n)
    and cross-attention scores over the caption (12·L·h·T); the text encoder runs once per image and
    is spread over its tokens.
    """
    h, layers, text_len = cfg.hidden_size, cfg.num_layers, cfg.caption_len + 1
    per_block = 4 * h * h + 2 * h * h + 2 * cfg.text_hidden_size * h + 3 * h * cfg.ffn_size
    matmul = layers * per_block + 2 * cfg.patch_features * h
    attention = 12 * layers * h * (tokens + text_len)
    c = cfg.text_hidden_size
    text = cfg.text_layers * (4 * c * c + 8 * c * c) * text_len * 6 + 12 * cfg.text_layers * c * text_len ** 2
    return 6.0 * matmul + attention + text / max(tokens, 1)


def flops_per_image(cfg: T2IConfig, image_size: int) -> float:
    """Model FLOPs (forward + backward) of one training image of image_size² pixels."""
    tokens = (image_size // cfg.patch_size) ** 2
    return flops_per_token(cfg, tokens) * tokens


SPEC = ModelSpec(
    family="t2i",
    config_cls=T2IConfig,
    layer_recipes=None,
    build=T2IModel,
    flops_per_token=flops_per_token,
    num_params=_count,
    task="rectified_flow",
    tokens_per_sample=lambda model, run: (run.images.image_size // model.patch_size) ** 2,
    reads_captions=True,
)
