"""The `model:` section of a text-to-image diffusion transformer (family t2i)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from gigatron.config.validate import divisibility_problems, layer_chunk_problems


@dataclass
class T2IConfig:
    """Shape of a text-to-image diffusion transformer and its text encoder."""

    family: ClassVar[str] = "t2i"

    channels: int = 3  # 3: pixels; a VAE's latent channels for latent-space training
    patch_size: int = 4
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_hidden_size: int | None = None  # None: 8/3·hidden rounded up to a multiple of 64 (SwiGLU)
    adaln_lora_rank: int = 32
    rope_base: float = 10000.0
    # Packed rows of at most this many patch tokens (variable resolution); None: one image per row.
    pack_tokens: int | None = None
    # Text encoder (trained with the model): vocabulary (>= the caption tokenizer's), caption length.
    vocab_size: int = 400
    caption_len: int = 32
    text_hidden_size: int = 128
    text_layers: int = 2
    text_heads: int = 4
    # A local Hugging Face text encoder directory (frozen; never downloaded) instead of the trained
    # one; its tokenizer comes with data.tokenizer: "hf:<same dir>" (docs/t2i.md).
    text_encoder: str | None = None
    norm_eps: float = 1e-6
    init_std: float = 0.02

    @property
    def ffn_size(self) -> int:
        """SwiGLU inner width."""
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        return 64 * math.ceil(8 * self.hidden_size / 3 / 64)

    @property
    def patch_features(self) -> int:
        """Values per patch token."""
        return self.patch_size * self.patch_size * self.channels

    def validate(self, run: Any) -> list[str]:
        """Problems with this shape in the run `run` (layout, images; empty when fine); messages name the keys."""
        parallel, images = run.parallel, run.images
        problems = divisibility_problems([
            ("model.hidden_size", self.hidden_size, "model.num_heads", self.num_heads),
            ("model.num_heads", self.num_heads, "parallel.tp", parallel.tp),
            ("model.text_hidden_size", self.text_hidden_size, "model.text_heads", self.text_heads),
            ("model.text_heads", self.text_heads, "parallel.tp", parallel.tp),
            ("model.ffn_hidden_size", self.ffn_size, "parallel.tp", parallel.tp),
            ("model.vocab_size", self.vocab_size, "parallel.tp", parallel.tp),
            ("images.image_size", images.image_size, "model.patch_size", self.patch_size),
        ])
        if self.hidden_size % self.num_heads == 0 and (self.hidden_size // self.num_heads) % 4:
            problems.append(f"model.hidden_size/model.num_heads={self.hidden_size // self.num_heads} must be divisible "
                            "by 4 for 2-D RoPE (half the head per axis, rotated in pairs)")
        if images.caption_len > self.caption_len:
            problems.append(f"images.caption_len={images.caption_len} exceeds model.caption_len={self.caption_len} "
                            "(the text encoder's positions)")
        if self.pack_tokens is not None:
            longest = max(h * w for h, w in image_shapes(images)) // self.patch_size ** 2
            if self.pack_tokens < longest:
                problems.append(f"model.pack_tokens={self.pack_tokens} is smaller than the largest image's "
                                f"{longest} patch tokens (images.image_size={images.image_size}, "
                                f"images.aspect_buckets={str(images.aspect_buckets).lower()})")
        for key in ("pp", "cp"):
            if getattr(parallel, key) > 1:
                problems.append(f"parallel.{key}={getattr(parallel, key)}: text-to-image models train with tensor "
                                "and data parallelism (parallel.tp, ZeRO); set parallel.pp and cp to 1")
        return problems + layer_chunk_problems(run)


def image_shapes(images) -> list[tuple[int, int]]:
    """The (height, width) sizes a run's images take: the aspect buckets, or image_size²."""
    if not images.aspect_buckets:
        return [(images.image_size, images.image_size)]
    from gigatron.data.image_pipeline import AspectBuckets

    return AspectBuckets(images.image_size, images.bucket_multiple, images.max_aspect_ratio).buckets
