"""`gigatron grow CKPT --out DIR`: grow a TokenFormer checkpoint by appending parameter tokens
(see gigatron.objectives.growth)."""

from __future__ import annotations

import argparse

from gigatron.commands.checkpoint_args import add_skip_checksums
from gigatron.commands.outcome import run_verified


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron grow`."""
    parser.add_argument("ckpt", help="TokenFormer checkpoint: run dir, checkpoints dir, step_* or consolidated dir")
    parser.add_argument("--qkv-tokens", type=int, default=None, help="new token count of each Q/K/V Pattention")
    parser.add_argument("--proj-tokens", type=int, default=None,
                        help="new token count of the attention output (default: as the checkpoint, which may "
                             "mean 'same as qkv')")
    parser.add_argument("--ffn-tokens", type=int, default=None, help="new token count of the FFN Pattention")
    parser.add_argument("--init", choices=["preserve", "random"], default="preserve",
                        help="preserve: same function after growth (default); random: the reference code's")
    parser.add_argument("--optimizer", choices=["keep", "reset"], default="keep",
                        help="AdamW moments of the existing tokens (new tokens always start at zero)")
    parser.add_argument("--schedule", choices=["continue", "restart"], default="continue",
                        help="continue: keep the step, data position and AdamW state (default); restart: weights "
                             "only, step 0 (the authors' incremental scaling)")
    parser.add_argument("--out", required=True, help="new directory for the grown (consolidated) checkpoint")
    add_skip_checksums(parser)


def run(args: argparse.Namespace) -> int:
    """Grow, or explain why not (exit 2); a failed verification exits 1."""
    from gigatron.objectives.growth import GrowthError, grow

    return run_verified("grow", lambda: grow(args.ckpt, args.out, args.qkv_tokens, args.proj_tokens, args.ffn_tokens,
                                             args.init, args.optimizer, checksums=not args.skip_checksums,
                                             schedule=args.schedule),
                        (GrowthError, FileNotFoundError, FileExistsError, ValueError, KeyError))
