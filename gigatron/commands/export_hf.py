"""`gigatron export-hf --ckpt CKPT --out DIR`: a checkpoint as a transformers model (see gigatron.checkpoint.hf_export)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron export-hf`."""
    parser.add_argument("--ckpt", required=True,
                        help="run dir, checkpoints dir, step_NNNNNNNN dir (any layout) or consolidated dir")
    parser.add_argument("--out", required=True, help="new directory for config.json + model.safetensors")



def run(args: argparse.Namespace) -> int:
    """Export, or explain why not (exit 2)."""
    from gigatron.checkpoint.hf_export import ExportError, export
    from gigatron.checkpoint.verify import VerificationError

    try:
        out = export(args.ckpt, args.out)
    except VerificationError as exc:
        print(f"gigatron export-hf: verification failed: {exc}", file=sys.stderr)
        return 1
    except (ExportError, FileNotFoundError, FileExistsError, ValueError, ImportError) as exc:
        print(f"gigatron export-hf: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0

