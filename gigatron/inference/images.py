"""Images out of a diffusion model: prompt tokens, pixel conversion, sample grids (`gigatron sample`, `gigatron align`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def size_multiple(model_cfg) -> int:
    """What an image's height and width must be multiples of for this model: its patch size, times
    its group size for models that attend within groups of patches (FIT)."""
    return getattr(model_cfg, "patch_size", 1) * getattr(model_cfg, "group_size", 1)


def parse_size(text: str | None, default: int, multiple: int = 1) -> tuple[int, int]:
    """`--size HxW` as (height, width), each a positive multiple of `multiple`; `default` square
    when not given."""
    if text is None:
        return default, default
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r} must be HxW in pixels, e.g. 32x32") from None
    if height < 1 or width < 1:
        raise ValueError(f"--size {text!r} must be positive")
    if height % multiple or width % multiple:
        near = f"{max(multiple, round(height / multiple) * multiple)}x{max(multiple, round(width / multiple) * multiple)}"
        raise ValueError(f"--size {text}: height and width must be multiples of {multiple} (the model's patch grid), "
                         f"e.g. {near}")
    return height, width


def prompt_tokens(ckpt, prompts: list[str]) -> torch.Tensor:
    """Token ids [len(prompts), images.caption_len] (−1 padded) with the run's caption tokenizer."""
    from gigatron.data.caption_tokenizer import caption_tokenizer
    from gigatron.data.default_images import run_image_root
    from gigatron.data.image_source import caption_ids

    data, images = ckpt.cfg.data, ckpt.cfg.images
    root = run_image_root(data, images)
    tokenizer = caption_tokenizer(data, images, root, train=False)
    recorded = ckpt.trainer_state.get("tokenizer_fingerprint")
    if recorded and recorded != tokenizer.fingerprint:
        raise ValueError(f"{ckpt.path} was trained with tokenizer {recorded}, but {root}'s captions tokenizer is "
                         f"{tokenizer.fingerprint}; pass the run's data")
    return torch.from_numpy(np.stack([caption_ids(tokenizer, prompt, images.caption_len) for prompt in prompts]))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[b, 3, H, W] in [-1, 1] -> uint8 [b, H, W, 3]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_grid(pixels: np.ndarray, rows: int, path: Path, pad: int = 2) -> None:
    """Tile uint8 [n, H, W, 3] images into `rows` rows on a white background."""
    n, height, width, _ = pixels.shape
    cols = -(-n // rows)
    grid = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad, 3), 255, dtype=np.uint8)
    for i, image in enumerate(pixels):
        r, c = divmod(i, cols)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[top:top + height, left:left + width] = image
    Image.fromarray(grid).save(path)
