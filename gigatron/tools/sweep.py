"""`gigatron sweep`: a grid of runs (e.g. model sizes x token budgets) as a SLURM job array.

    gigatron sweep plan --config configs/hybrid/smoke.yaml --grid model.hidden_size=64,128 \\
        --grid train.steps=50,100 --out sweeps/size-x-tokens         # writes sweep.json, prints sbatch line
    sbatch --array=0-3 slurm/sweep.sh sweeps/size-x-tokens           # task i trains into task-00i/
    gigatron sweep summary sweeps/size-x-tokens                      # summary.csv / summary.json

`gigatron sweep task DIR I` prints task I's config, run dir and overrides one per line for
slurm/sweep.sh. Every task's config is loaded and checked when the plan is made, so a typo fails
before anything is queued.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from pathlib import Path
from typing import Any

PLAN = "sweep.json"


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """['model.hidden_size=64,128'] -> [('model.hidden_size', ['64', '128'])]."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--grid {item!r} must look like section.key=v1,v2,...")
        grid.append((key, [v.strip() for v in values.split(",") if v.strip()]))
    return grid


def make_plan(config: Path, grid: list[tuple[str, list[str]]], common: list[str], out: Path) -> dict[str, Any]:
    """Write `<out>/sweep.json` with one task per grid point; validates every task's config."""
    from gigatron.config import load_config

    if not config.is_file():
        raise FileNotFoundError(f"--config {config} does not exist")
    if (out / PLAN).exists():
        raise FileExistsError(f"{out / PLAN} exists; choose a new --out (a sweep's tasks write into it)")
    tasks = []
    for index, values in enumerate(itertools.product(*[vals for _, vals in grid])):
        overrides = common + [f"{key}={value}" for (key, _), value in zip(grid, values, strict=True)]
        run_dir = out / f"task-{index:03d}"
        try:
            load_config(config, overrides + [f"output_dir={run_dir}"])
        except ValueError as exc:
            raise ValueError(f"sweep task {index} ({', '.join(overrides)}): {exc}") from exc
        tasks.append({"index": index, "overrides": overrides, "run_dir": str(run_dir)})
    out.mkdir(parents=True, exist_ok=True)
    plan = {"config": str(config), "grid": [[k, v] for k, v in grid], "tasks": tasks}
    (out / PLAN).write_text(json.dumps(plan, indent=1))
    return plan


def load_plan(sweep_dir: Path) -> dict[str, Any]:
    """The plan of a sweep directory."""
    path = sweep_dir / PLAN
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: make the sweep with `gigatron sweep plan` first")
    return json.loads(path.read_text())


def task_lines(sweep_dir: Path, index: int) -> list[str]:
    """Config path, run dir, then `--set`, `k=v` pairs: what slurm/sweep.sh passes to pretrain."""
    plan = load_plan(sweep_dir)
    tasks = plan["tasks"]
    if not 0 <= index < len(tasks):
        raise ValueError(f"task {index} outside the sweep's 0..{len(tasks) - 1}")
    task = tasks[index]
    return [plan["config"], task["run_dir"], *[part for o in task["overrides"] for part in ("--set", o)]]


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per task: its grid values, status, final losses, tokens, parameters and training FLOPs."""
    from gigatron.config import load_config
    from gigatron.models.registry import get_model_spec
    from gigatron.pretrain.engine import total_steps
    from gigatron.tools.run_summary import summarize_run

    plan = load_plan(sweep_dir)
    rows = []
    for task in plan["tasks"]:
        cfg = load_config(plan["config"], task["overrides"] + [f"output_dir={task['run_dir']}"])
        spec = get_model_spec(type(cfg.model).family)
        row: dict[str, Any] = {"task": task["index"], **dict(o.split("=", 1) for o in task["overrides"])}
        try:
            run = summarize_run(task["run_dir"])
        except FileNotFoundError:
            run = None
        steps = total_steps(cfg)
        row.update(
            status="not started" if run is None else ("done" if run.step >= steps else f"step {run.step}/{steps}"),
            params=spec.num_params(cfg.model),
            tokens=0 if run is None else run.tokens,
            flops=0.0 if run is None else spec.flops_per_token(cfg.model, cfg.data.seq_len) * run.tokens,
            final_loss=None if run is None else run.loss,
            valid_loss=None if run is None else run.valid_loss,
        )
        rows.append(row)
    with open(sweep_dir / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=1))
    return rows


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
