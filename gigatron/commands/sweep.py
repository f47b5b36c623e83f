"""`gigatron sweep plan|task|summary`: a grid of runs as a SLURM job array (see gigatron.scaling.sweep)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands plan, task, summary."""
    sub = parser.add_subparsers(dest="action", required=True)
    plan = sub.add_parser("plan", help="write the grid as sweep.json")
    plan.add_argument("--config", required=True, type=Path)
    plan.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="one axis (repeatable)")
    plan.add_argument("--set", dest="overrides", action="append", default=[], help="override for every task")
    plan.add_argument("--out", required=True, type=Path)
    task = sub.add_parser("task", help="print task I's config, run dir and overrides (for slurm/sweep.sh)")
    task.add_argument("sweep_dir", type=Path)
    task.add_argument("index", type=int)
    summary = sub.add_parser("summary", help="write summary.csv / summary.json of the finished runs")
    summary.add_argument("sweep_dir", type=Path)


def run(args: argparse.Namespace) -> int:
    """Dispatch; input problems exit 2 with a message."""
    from gigatron.scaling.sweep import PLAN, make_plan, parse_grid, summarize, task_lines

    try:
        if args.action == "plan":
            if not args.grid:
                raise ValueError("give at least one --grid KEY=V1,V2")
            plan = make_plan(args.config, parse_grid(args.grid), args.overrides, args.out)
            n = len(plan["tasks"])
            print(f"{n} tasks in {args.out / PLAN}; submit with:\n  sbatch --array=0-{n - 1} slurm/sweep.sh {args.out}")
        elif args.action == "task":
            print("\n".join(task_lines(args.sweep_dir, args.index)))
        else:
            rows = summarize(args.sweep_dir)
            keys = list(rows[0])
            print("\t".join(keys))
            for row in rows:
                print("\t".join("" if row[k] is None else f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k])
                                for k in keys))
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"gigatron sweep: {exc}", file=sys.stderr)
        return 2
    return 0

