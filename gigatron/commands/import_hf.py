"""`gigatron import-hf SRC OUT`: a local transformers model as a gigatron checkpoint (see gigatron.checkpoint.hf_import)."""

from __future__ import annotations

import argparse

from gigatron.commands.outcome import run_verified


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron import-hf`."""
    parser.add_argument("src", help="local transformers model directory (config.json + *.safetensors)")
    parser.add_argument("out", help="new directory for the consolidated gigatron checkpoint")


def run(args: argparse.Namespace) -> int:
    """Import, or explain why not (exit 2); a verification failure exits 1."""
    from gigatron.checkpoint.hf_export import ExportError
    from gigatron.checkpoint.hf_import import UnsupportedModelError, import_hf

    return run_verified("import-hf", lambda: import_hf(args.src, args.out),
                        (UnsupportedModelError, ExportError, FileNotFoundError, FileExistsError, ValueError))
