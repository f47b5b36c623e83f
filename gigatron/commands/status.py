"""`gigatron status RUN_DIR`: a human summary of a run."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron status`."""
    parser.add_argument("run_dir", help="a run's output_dir")


def run(args: argparse.Namespace) -> int:
    """Print the summary; exit 2 if the directory is not a run."""
    from gigatron.pretrain.run_summary import format_summary, summarize_run

    try:
        print(format_summary(summarize_run(args.run_dir)))
    except FileNotFoundError as exc:
        print(f"gigatron status: {exc}", file=sys.stderr)
        return 2
    return 0
