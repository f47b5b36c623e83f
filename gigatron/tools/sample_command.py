"""`gigatron sample CKPT --out DIR`: draw images from a trained diffusion checkpoint.

Class-conditional models take `--label NAME` (repeatable; default: every class of the run's
data.classes); `--per-label K` images of each, from noise seeded by `--seed`, integrated with
`--steps` Euler steps of the rectified flow and classifier-free guidance `--cfg`. Writes one PNG
per image (`<label>-<k>.png`) and `grid.png` (one row per label).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron sample`."""
    parser.add_argument("ckpt", help="run dir, checkpoints dir, step_NNNNNNNN dir or consolidated checkpoint")
    parser.add_argument("--out", required=True, type=Path, help="directory for the PNGs (created)")
    parser.add_argument("--label", action="append", default=None,
                        help="class name to draw (repeatable); default: every class of the run")
    parser.add_argument("--per-label", type=int, default=4, help="images per label (default 4)")
    parser.add_argument("--size", default=None,
                        help="HxW in pixels (default: the run's data.image_size, square)")
    parser.add_argument("--steps", type=int, default=50, help="Euler steps (default 50)")
    parser.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale; 1 = none (default 2)")
    parser.add_argument("--shift", type=float, default=None, help="time shift (default: the run's train.flow.shift)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")


def _size(text: str | None, default: int) -> tuple[int, int]:
    if text is None:
        return default, default
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r} must be HxW in pixels, e.g. 32x32") from None
    if height < 1 or width < 1:
        raise ValueError(f"--size {text!r} must be positive")
    return height, width


def _labels(names: list[str] | None, classes: list[str]) -> list[tuple[str, int]]:
    if not classes:
        if names:
            raise ValueError(f"--label {names}: the checkpoint's model is unconditional (no data.classes)")
        return [("unconditional", -1)]
    if not names:
        return [(name, i) for i, name in enumerate(classes)]
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise ValueError(f"--label {', '.join(unknown)}: not a class of this run; valid: {', '.join(classes)}")
    return [(n, classes.index(n)) for n in names]


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


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, sample, write PNGs."""
    from gigatron.tools.checkpoint_io import load_checkpoint_model

    try:
        cfg, model = load_checkpoint_model(args.ckpt)
        if not hasattr(model, "sample"):
            raise ValueError(f"{args.ckpt}: model.family={type(cfg.model).family} is not a diffusion model; "
                             "`gigatron sample` draws from diffusion checkpoints (e.g. fit_diffusion)")
        if args.per_label < 1 or args.steps < 1:
            raise ValueError(f"--per-label ({args.per_label}) and --steps ({args.steps}) must be >= 1")
        height, width = _size(args.size, cfg.data.image_size)
        labels = _labels(args.label, cfg.data.classes or [])
    except (FileNotFoundError, ValueError) as exc:
        print(f"gigatron sample: {exc}", file=sys.stderr)
        return 2
    shift = cfg.train.flow.shift if args.shift is None else args.shift
    ids = torch.tensor([i for _, i in labels for _ in range(args.per_label)])
    noise = torch.randn(len(ids), cfg.model.channels, height, width, generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    try:
        images = model.sample(noise, ids, args.steps, guidance=args.cfg, shift=shift)
    except ValueError as exc:  # e.g. a --size the patch grid does not divide
        print(f"gigatron sample: --size {height}x{width}: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images)
    for i, image in enumerate(pixels):
        name, k = labels[i // args.per_label][0], i % args.per_label
        Image.fromarray(image).save(args.out / f"{name}-{k}.png")
    save_grid(pixels, len(labels), args.out / "grid.png")
    print(f"[sample] {len(pixels)} images of {height}x{width} in {elapsed:.1f} s ({args.steps} steps, cfg {args.cfg}) "
          f"-> {args.out}/grid.png")
    return 0
