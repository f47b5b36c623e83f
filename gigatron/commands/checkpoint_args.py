"""Command-line options shared by the commands that read a checkpoint."""

from __future__ import annotations

import argparse


def add_skip_checksums(parser: argparse.ArgumentParser) -> None:
    """`--skip-checksums`: check the checkpoint's files against its manifest by size only."""
    parser.add_argument("--skip-checksums", action="store_true",
                        help="check the checkpoint's files against its manifest by size only, not sha256 "
                             "(faster on large checkpoints; a file changed in place goes unnoticed)")
