"""`gigatron launch --nproc N -- COMMAND ...`: N local ranks of a command (see gigatron.launcher.launch)."""

from __future__ import annotations

import argparse
import os
import sys

from gigatron.launcher.exit_codes import EXIT_CONFIG_ERROR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `gigatron launch` options on `parser`."""
    parser.usage = "%(prog)s --nproc N [--master-port P] [--omp-threads T] [--grace S] -- COMMAND ..."
    parser.add_argument("--nproc", type=int, required=True, help="number of local ranks to start")
    parser.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: a free one)")
    parser.add_argument(
        "--omp-threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS per rank (default: $OMP_NUM_THREADS, else cpu_count // nproc)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds the other ranks get after one fails before SIGTERM, and again before SIGKILL",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command each rank runs, after --")


def run(args: argparse.Namespace) -> int:
    """Start `args.nproc` copies of `args.command`, wait for them, and return the combined exit code."""
    from gigatron.launcher.dist_env import find_free_port
    from gigatron.launcher.launch import LocalLauncher, child_environ

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("gigatron launch: error: no command given; usage: gigatron launch --nproc N -- COMMAND ...",
              file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.nproc < 1:
        print(f"gigatron launch: error: --nproc must be >= 1, got {args.nproc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    port = args.master_port if args.master_port is not None else find_free_port()
    envs = [
        child_environ(os.environ, rank, args.nproc, port, args.omp_threads) for rank in range(args.nproc)
    ]
    return LocalLauncher(command, envs, grace_s=args.grace).run()

