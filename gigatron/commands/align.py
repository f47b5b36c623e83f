"""`gigatron align CKPT --out DIR`: text-image alignment of a text-to-image checkpoint on shapes captions
(see gigatron.inference.alignment)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gigatron.commands.checkpoint_args import add_skip_checksums


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron align`."""
    parser.add_argument("ckpt", help="run dir, checkpoints dir, step_NNNNNNNN dir or consolidated checkpoint")
    parser.add_argument("--out", required=True, type=Path, help="directory for alignment.json and grid.png")
    parser.add_argument("--images", type=int, default=64, help="validation captions to draw (default 64)")
    parser.add_argument("--steps", type=int, default=30, help="Euler steps (default 30)")
    parser.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    parser.add_argument("--size", default=None, help="HxW (default: images.image_size square)")
    parser.add_argument("--batch", type=int, default=16, help="images sampled at once (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    add_skip_checksums(parser)


def run(args: argparse.Namespace) -> int:
    """CLI entry."""
    from gigatron.inference.alignment import evaluate

    try:
        evaluate(args.ckpt, args.out, args.images, args.steps, args.cfg, args.size, args.batch, args.seed,
                 checksums=not args.skip_checksums)
    except (FileNotFoundError, ValueError) as exc:
        print(f"gigatron align: {exc}", file=sys.stderr)
        return 2
    return 0

