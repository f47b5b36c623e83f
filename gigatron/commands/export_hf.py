"""`gigatron export-hf --ckpt CKPT --out DIR`: a checkpoint as a transformers model (see gigatron.checkpoint.hf_export)."""

from __future__ import annotations

import argparse

from gigatron.commands.checkpoint_args import add_skip_checksums
from gigatron.commands.outcome import run_verified


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron export-hf`."""
    parser.add_argument("--ckpt", required=True,
                        help="run dir, checkpoints dir, step_NNNNNNNN dir (any layout) or consolidated dir")
    parser.add_argument("--out", required=True, help="new directory for config.json + model.safetensors")
    add_skip_checksums(parser)


def run(args: argparse.Namespace) -> int:
    """Export, or explain why not (exit 2); a verification failure exits 1."""
    from gigatron.checkpoint.hf_export import ExportError, export

    code = run_verified("export-hf", lambda: export(args.ckpt, args.out, checksums=not args.skip_checksums),
                        (ExportError, FileNotFoundError, FileExistsError, ValueError, ImportError))
    if code == 0:
        print(f"wrote {args.out} (load with transformers.AutoModelForCausalLM.from_pretrained({str(args.out)!r}))")
    return code
