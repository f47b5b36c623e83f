"""`gigatron import-hf SRC OUT`: a local transformers model as a gigatron checkpoint (see gigatron.checkpoint.hf_import)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron import-hf`."""
    parser.add_argument("src", help="local transformers model directory (config.json + *.safetensors)")
    parser.add_argument("out", help="new directory for the consolidated gigatron checkpoint")



def run(args: argparse.Namespace) -> int:
    """Import, or explain why not (exit 2); a verification failure exits 1."""
    from gigatron.checkpoint.hf_export import ExportError
    from gigatron.checkpoint.hf_import import UnsupportedModelError, import_hf
    from gigatron.checkpoint.verify import VerificationError

    try:
        import_hf(args.src, args.out)
    except VerificationError as exc:
        print(f"gigatron import-hf: verification failed: {exc}", file=sys.stderr)
        return 1
    except (UnsupportedModelError, ExportError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"gigatron import-hf: {exc}", file=sys.stderr)
        return 2
    return 0

