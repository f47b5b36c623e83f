"""`gigatron sample CKPT --out DIR`: draw images from a trained diffusion checkpoint.

Text-to-image models take `--prompt TEXT` (repeatable); class-conditional models `--label NAME`
(repeatable; default: every class of the run's images.classes). `--count K` images of each, from
noise seeded by `--seed`, integrated with `--steps` Euler steps of the rectified flow and
classifier-free guidance `--cfg`. Writes one PNG per image (`<label>-<k>.png`, or `prompt<j>-<k>.png`
with the prompts in prompts.txt) and `grid.png` (one row per label or prompt).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from gigatron.commands.checkpoint_args import add_skip_checksums


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron sample`."""
    parser.add_argument("ckpt", help="run dir, checkpoints dir, step_NNNNNNNN dir or consolidated checkpoint")
    parser.add_argument("--out", required=True, type=Path, help="directory for the PNGs (created)")
    parser.add_argument("--prompt", action="append", default=None,
                        help="text-to-image models: a caption to draw (repeatable)")
    parser.add_argument("--label", action="append", default=None,
                        help="class-conditional models: class name to draw (repeatable); default: every class")
    parser.add_argument("--count", type=int, default=4, help="images per prompt or label (default 4)")
    parser.add_argument("--size", default=None,
                        help="HxW in pixels (default: the run's images.image_size, square)")
    parser.add_argument("--steps", type=int, default=50, help="Euler steps (default 50)")
    parser.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale; 1 = none (default 2)")
    parser.add_argument("--shift", type=float, default=None, help="time shift (default: the run's diffusion.shift)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    add_skip_checksums(parser)


def _labels(names: list[str] | None, classes: list[str]) -> list[tuple[str, int]]:
    if not classes:
        if names:
            raise ValueError(f"--label {names}: the checkpoint's model is unconditional (no images.classes)")
        return [("unconditional", -1)]
    if not names:
        return [(name, i) for i, name in enumerate(classes)]
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise ValueError(f"--label {', '.join(unknown)}: not a class of this run; valid: {', '.join(classes)}")
    return [(n, classes.index(n)) for n in names]


def _conditions(args: argparse.Namespace, ckpt: Any) -> tuple[list[str], Any]:
    """Row names and the model's condition per row (label ids, or caption token ids)."""
    import torch

    from gigatron.inference.images import prompt_tokens
    from gigatron.models.registry import get_model_spec

    cfg = ckpt.cfg
    if getattr(get_model_spec(type(cfg.model).family), "reads_captions", False):
        if not args.prompt or args.label:
            raise ValueError(f"model.family={type(cfg.model).family} is text-to-image: pass --prompt TEXT "
                             "(repeatable), not --label")
        return [f"prompt{j}" for j in range(len(args.prompt))], prompt_tokens(ckpt, args.prompt)
    if args.prompt:
        raise ValueError(f"model.family={type(cfg.model).family} is class-conditional: pass --label, not --prompt")
    labels = _labels(args.label, cfg.images.classes or [])
    return [name for name, _ in labels], torch.tensor([i for _, i in labels])


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, sample, write PNGs."""
    import numpy as np
    import torch
    from PIL import Image

    from gigatron.checkpoint.reader import model_from_checkpoint, open_checkpoint
    from gigatron.inference.images import parse_size, save_grid, size_multiple, to_uint8

    try:
        ckpt = open_checkpoint(args.ckpt, not args.skip_checksums)
        cfg, model = ckpt.cfg, model_from_checkpoint(ckpt)
        if not hasattr(model, "sample"):
            raise ValueError(f"{args.ckpt}: model.family={type(cfg.model).family} is not a diffusion model; "
                             "`gigatron sample` draws from diffusion checkpoints (fit_diffusion, t2i)")
        if args.count < 1 or args.steps < 1:
            raise ValueError(f"--count ({args.count}) and --steps ({args.steps}) must be >= 1")
        height, width = parse_size(args.size, cfg.images.image_size, size_multiple(cfg.model))
        names, conditions = _conditions(args, ckpt)
    except (FileNotFoundError, ValueError) as exc:
        print(f"gigatron sample: {exc}", file=sys.stderr)
        return 2
    shift = cfg.diffusion.shift if args.shift is None else args.shift
    conditions = conditions.repeat_interleave(args.count, dim=0)
    noise = torch.randn(len(conditions), cfg.model.channels, height, width,
                        generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    try:
        images = model.sample(noise, conditions, args.steps, guidance=args.cfg, shift=shift)
    except ValueError as exc:  # e.g. a --size the patch grid does not divide
        print(f"gigatron sample: --size {height}x{width}: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    if cfg.model.channels != 3:  # a latent-space model: the user's VAE decodes these
        np.save(args.out / "latents.npy", images.float().numpy())
        print(f"[sample] {len(images)} latents {tuple(images.shape[1:])} in {elapsed:.1f} s -> {args.out}/latents.npy "
              "(decode them with the VAE that produced the training latents)")
        return 0
    pixels = to_uint8(images)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(args.out / f"{names[i // args.count]}-{i % args.count}.png")
    if args.prompt:
        (args.out / "prompts.txt").write_text("".join(f"prompt{j}: {p}\n" for j, p in enumerate(args.prompt)))
    save_grid(pixels, len(names), args.out / "grid.png")
    print(f"[sample] {len(pixels)} images of {height}x{width} in {elapsed:.1f} s ({args.steps} steps, cfg {args.cfg}) "
          f"-> {args.out}/grid.png")
    return 0

