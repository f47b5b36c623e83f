"""`gigatron convert consolidate|reshard`: move a checkpoint between layouts (see gigatron.checkpoint.convert).

    consolidate CKPT OUT    any checkpoint (ZeRO 0-3, any TP/PP) -> one consolidated directory
    reshard CKPT OUT --tp T --pp P --dp D --zero Z
                            any checkpoint -> DeepSpeed files of another layout (OUT is a checkpoints
                            directory with `latest`, resumable with `pretrain --resume-from OUT`)

`reshard` runs `gigatron convert reshard-worker` as tp*pp*dp ranks, each building the target
layout's engine from the source and saving it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import sys
from pathlib import Path

from gigatron.commands.checkpoint_args import add_skip_checksums
from gigatron.launcher.exit_codes import EXIT_CONFIG_ERROR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands of `gigatron convert`."""
    sub = parser.add_subparsers(dest="convert_command", required=True, metavar="SUBCOMMAND")
    cons = sub.add_parser("consolidate", help="any checkpoint -> one consolidated safetensors directory")
    cons.add_argument("ckpt", help="run dir, checkpoints dir, step_NNNNNNNN dir or consolidated dir")
    cons.add_argument("out", help="new directory")
    cons.add_argument("--no-verify", action="store_true", help="skip reloading and comparing the result")
    add_skip_checksums(cons)
    resh = sub.add_parser("reshard", help="any checkpoint -> DeepSpeed checkpoint files of another layout")
    resh.add_argument("ckpt", help="run dir, checkpoints dir, step_NNNNNNNN dir or consolidated dir")
    resh.add_argument("out", help="new checkpoints directory (gets `latest` and one step_NNNNNNNN tag)")
    resh.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the new layout")
    resh.add_argument("--pp", type=int, default=1, help="pipeline stages of the new layout")
    resh.add_argument("--dp", type=int, default=1, help="data-parallel size (matters for ZeRO >= 1)")
    resh.add_argument("--zero", type=int, default=None, choices=[0, 1, 2, 3], help="ZeRO stage (default: source's)")
    resh.add_argument("--no-verify", action="store_true", help="skip reloading and comparing the result")
    add_skip_checksums(resh)
    worker = sub.add_parser("reshard-worker", help=argparse.SUPPRESS)
    worker.add_argument("--source", required=True)
    worker.add_argument("--config", required=True)
    worker.add_argument("--out", required=True)


def run_worker(args: argparse.Namespace) -> int:
    """One rank of `reshard`: build the target layout's engine from the source, save it."""
    from gigatron.checkpoint.reader import open_checkpoint
    from gigatron.checkpoint.save import TrainerState, save_checkpoint, set_rng_state
    from gigatron.config import config_to_yaml, load_config, validate_config
    from gigatron.launcher.dist_env import DistEnv, exit_distributed, init_distributed
    from gigatron.parallel.layout import initialize_layout
    from gigatron.pretrain.engine import build_engine

    env = DistEnv.from_environ()
    cfg = validate_config(load_config(args.config), env.world_size)
    init_distributed(env)
    ranks = initialize_layout(cfg.parallel)
    source = open_checkpoint(args.source, verified=True)  # `reshard` checked it before starting the ranks
    engine = build_engine(cfg, ranks, "cpu", init_from=source)
    if source.rng is not None:
        set_rng_state(source.rng)
    state = TrainerState(**source.trainer_state)
    save_checkpoint(engine.engine, Path(args.out), state, config_to_yaml(cfg), keep_last=1,
                    log=print if env.is_main else (lambda _text: None))
    exit_distributed(0)


def _return_freed_tensors_to_the_os() -> None:
    # After freeing a large block glibc raises its mmap threshold (up to 32 MiB) and then serves
    # tensors below it from the heap, which it does not give back: a conversion would keep the
    # memory of every freed tensor up to that size. A fixed 1 MiB threshold turns that off, so
    # memory stays bounded by the tensors alive at once. No effect on other C libraries.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def run(args: argparse.Namespace) -> int:
    """Dispatch; input problems exit 2 with a message naming the file or value."""
    _return_freed_tensors_to_the_os()  # before anything allocates tensors
    from gigatron.checkpoint.convert import consolidate, reshard
    from gigatron.checkpoint.safe_load import UnsafeCheckpointError
    from gigatron.checkpoint.verify import VerificationError
    from gigatron.config import ConfigError

    try:
        if args.convert_command == "reshard-worker":
            return run_worker(args)
        if args.convert_command == "consolidate":
            consolidate(args.ckpt, args.out, verify=not args.no_verify, checksums=not args.skip_checksums)
        else:
            reshard(args.ckpt, args.out, args.tp, args.pp, args.dp, args.zero, verify=not args.no_verify,
                    checksums=not args.skip_checksums)
    except (VerificationError, RuntimeError) as exc:
        print(f"gigatron convert: {exc}", file=sys.stderr)
        return 1
    except (UnsafeCheckpointError, ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        print(f"gigatron convert: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0

