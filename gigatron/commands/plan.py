"""`gigatron plan --config X.yaml [--set k=v] [--gpus N --gpu-memory 80GiB --gpu-peak-tflops 989] [--search] [--json]`.

Plans a run from shapes, without allocating it: each rank's memory by part, FLOPs per step, step
time, tokens/s and time to the token budget at an assumed MFU. `--search` lists the layouts of the
same model and batch that fit, fastest first. Exit code 0 when the config's layout fits, 3 when it
does not, 2 for a bad config or target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator

from gigatron.launcher.exit_codes import EXIT_CONFIG_ERROR

EXIT_DOES_NOT_FIT = 3
_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 1e3, "mb": 1e6, "gb": 1e9,
          "tb": 1e12}


def parse_bytes(text: str) -> float:
    """'80GiB', '80GB', '80' (GiB) -> GiB as a float."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use e.g. 80GiB, 141GB or 80 (GiB)")
    value, unit = float(match.group(1)), match.group(2).lower()
    return value if unit == "" else value * _UNITS[unit] / 2**30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line flags of `gigatron plan`."""
    parser.add_argument("--config", required=True, help="YAML run config, e.g. configs/hybrid/8b.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set parallel.tp=8 (repeatable)")
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPUs of the run (default: hardware.gpus, else one model replica)")
    parser.add_argument("--gpu-memory", type=parse_bytes, default=None, metavar="SIZE",
                        help="memory per GPU, e.g. 80GiB (default: hardware.gpu_memory_gib)")
    parser.add_argument("--gpu-peak-tflops", type=float, default=None,
                        help="dense peak TFLOP/s per GPU in the training precision (default: hardware.gpu_peak_tflops)")
    parser.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation assumed (default: hardware.mfu)")
    parser.add_argument("--overhead", type=parse_bytes, default=None, metavar="SIZE",
                        help="per-GPU memory outside the allocator (default: hardware.overhead_gib)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="plan a GPU run (default) or a CPU run (no CUDA optimizer temporaries)")
    parser.add_argument("--search", action="store_true", help="list the layouts that fit, fastest first")
    parser.add_argument("--top", type=int, default=10, help="layouts --search prints (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run(args: argparse.Namespace) -> int:
    """Plan the config's layout (and with --search, every layout); exit 3 when it does not fit."""
    from gigatron.config import ConfigError, load_config
    from gigatron.planning.plan import Target, plan_run, search_layouts
    from gigatron.planning.report import gib, plan_json, plan_table, search_table

    try:
        # DeepSpeed and its ops print to stdout while importing and building: keep stdout for the plan.
        with _stdout_to_stderr():
            cfg = load_config(args.config, args.overrides)
            target = Target.from_config(cfg, gpus=args.gpus, memory_gib=args.gpu_memory,
                                        peak_tflops=args.gpu_peak_tflops, mfu=args.mfu, overhead_gib=args.overhead,
                                        device=args.device)
            plan = plan_run(cfg, target)
            found = search_layouts(cfg, target, limit=args.top) if args.search else None
    except ConfigError as exc:
        print(f"gigatron plan: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.json:
        out = plan_json(plan)
        if found is not None:
            out["search"] = [plan_json(p) for p in found]
        print(json.dumps(out, indent=2))
    else:
        print(plan_table(plan))
        if found is not None:
            print()
            print(f"layouts that fit {target.gpus} GPUs of {gib(target.memory_bytes)} GiB, fastest first:"
                  if found else "no layout searched fits; more GPUs, a shorter sequence or a smaller batch may")
            if found:
                print(search_table(found))
    return 0 if plan.fits else EXIT_DOES_NOT_FIT
