"""`gigatron pretrain --config X.yaml [--set a.b=c ...]`."""

from __future__ import annotations

import argparse
import sys

from gigatron.config import ConfigError, load_config, validate_config
from gigatron.launcher.exit_codes import EXIT_CONFIG_ERROR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line flags of `gigatron pretrain`."""
    parser.add_argument("--config", required=True, help="YAML run config, e.g. configs/gpt/smoke.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.steps=10 (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Validate the config for this world size before any process group exists, then train."""
    from gigatron.launcher.dist_env import DistEnv, init_distributed

    env = DistEnv.from_environ()
    try:
        cfg = validate_config(load_config(args.config, args.overrides), env.world_size)
    except ConfigError as exc:
        print(f"gigatron pretrain: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    init_distributed(env)
    from gigatron.pretrain.loop import Trainer

    try:
        return Trainer(cfg, env).run()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
