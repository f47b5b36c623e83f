"""`gigatron pretrain --config X.yaml [--set a.b=c ...]`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

from gigatron.config import ConfigError, load_config, validate_config
from gigatron.data.errors import DataError
from gigatron.launcher.exit_codes import EXIT_CONFIG_ERROR, EXIT_INTERRUPTED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line flags of `gigatron pretrain`."""
    parser.add_argument("--config", required=True, help="YAML run config, e.g. configs/gpt/smoke.yaml")
    parser.add_argument("--resume-from", metavar="CKPT", default=None,
                        help="start from this checkpoint, written by any layout: a run dir, checkpoints dir, "
                             "step_NNNNNNNN dir or consolidated dir (same as --set checkpoint.resume=CKPT)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.steps=10 (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Validate the config for this world size before any process group exists, then train.

    Meant as the process's entry point: after training it exits the process with the trainer's
    code. Use `gigatron.pretrain.loop.Trainer` to train in-process. Ctrl-C while training stops at
    the next step boundary with a checkpoint (exit 130); before training starts it ends the
    process at once with one line.
    """
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("\ngigatron pretrain: interrupted before training started; nothing was saved", file=sys.stderr,
              flush=True)
        os._exit(EXIT_INTERRUPTED)


def _run(args: argparse.Namespace) -> int:
    from gigatron.launcher.dist_env import DistEnv, exit_distributed, init_distributed

    env = DistEnv.from_environ()
    # A file-size limit (ulimit -f) must fail a checkpoint write with EFBIG, which the save reports
    # and cleans up after, instead of killing the rank mid-file with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    overrides = list(args.overrides)
    if args.resume_from is not None:
        overrides.append(f"checkpoint.resume={args.resume_from}")
    try:
        cfg = validate_config(load_config(args.config, overrides), env.world_size)
        from gigatron.planning.throughput import schedule_budget_problems

        if cfg.train.tokens is not None and (problems := schedule_budget_problems(cfg)):
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
        # Before any process group and any allocation: the plan builds on a fake group.
        from gigatron.pretrain.memory_check import check_memory

        plan = check_memory(cfg, env)
    except ConfigError as exc:
        print(f"gigatron pretrain: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if plan is not None and env.is_main:
        from gigatron.planning.report import size_text
        from gigatron.pretrain.log_format import stamped

        print(stamped(f"[plan] {size_text(plan.peak.total)} per rank planned (largest: pipeline stage "
                      f"{plan.peak.stage}) of {size_text(plan.target.memory_bytes)}; `gigatron plan --config "
                      f"{args.config}` for the breakdown"), flush=True)
    init_distributed(env)
    from gigatron.checkpoint.resume import ResumeError
    from gigatron.pretrain.loop import Trainer
    from gigatron.pretrain.run_directory import claim_output_dir
    from gigatron.pretrain.watchdog import collective_failed, mark_failed

    lock = watchdog = None
    try:
        # One run per output_dir, before anything reads or writes there.
        lock = claim_output_dir(cfg, log=print if env.is_main else (lambda _text: None))
        watchdog = _start_watchdog(cfg, env)
        code = Trainer(cfg, env, watchdog).run()
    except (ConfigError, DataError, FileNotFoundError, ResumeError) as exc:
        # Input problems found once data and checkpoints are visible: a message, not a traceback.
        mark_failed(Path(cfg.output_dir), env.rank, str(exc))
        print(f"gigatron pretrain (rank {env.rank}): {exc}", file=sys.stderr, flush=True)
        _release(lock)
        os._exit(EXIT_CONFIG_ERROR)
    except KeyboardInterrupt:
        _release(lock)
        raise
    except BaseException as exc:  # noqa: BLE001 - any crash must end the process, not hang it
        # Loader workers, TensorBoard's writer thread or a pending collective can keep a crashed
        # rank alive forever after a normal exit; the scheduler must see the failure at once.
        if watchdog is not None and collective_failed(exc):
            _release(lock)
            os._exit(watchdog.peer_lost(exc))
        mark_failed(Path(cfg.output_dir), env.rank, f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        sys.stderr.flush()
        _release(lock)
        os._exit(1)
    # Every rank has finished writing (the trainer's last save ends with a barrier).
    watchdog.stop()
    _release(lock)
    exit_distributed(code)


def _start_watchdog(cfg, env):
    """This rank's hang watchdog (train.hang_timeout), writing into output_dir's health/ and faults/."""
    import time

    from gigatron.launcher.dist_env import broadcast_from_first_rank
    from gigatron.pretrain.watchdog import Watchdog

    # Names this invocation's faults/ directory, the same on every rank.
    run_id = broadcast_from_first_rank(time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    return Watchdog(Path(cfg.output_dir), env.rank, env.world_size, cfg.train.hang_timeout,
                    cfg.train.hang_allowance, str(run_id)).start()


def _release(lock) -> None:
    if lock is not None:
        lock.release()
