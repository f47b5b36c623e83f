"""Sweeps (`gigatron sweep`): a grid of runs (e.g. model sizes x token budgets) as a SLURM job array.

    gigatron sweep plan --config configs/hybrid/smoke.yaml --grid model.hidden_size=64,128 \\
        --grid train.steps=50,100 --out sweeps/size-x-tokens         # writes sweep.json, prints sbatch line
    sbatch --array=0-3 slurm/sweep.sh sweeps/size-x-tokens           # task i trains into task-00i/
    gigatron sweep summary sweeps/size-x-tokens                      # summary.csv / summary.json

`gigatron sweep task DIR I` prints task I's config, run dir and overrides one per line for
slurm/sweep.sh. Every task's config is loaded and checked when the plan is made, so a typo fails
before anything is queued.
"""

from __future__ import annotations

import csv
import itertools
import json
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
    from gigatron.planning.throughput import schedule_budget_problems

    if not config.is_file():
        raise FileNotFoundError(f"--config {config} does not exist")
    if (out / PLAN).exists():
        raise FileExistsError(f"{out / PLAN} exists; choose a new --out (a sweep's tasks write into it)")
    tasks = []
    for index, values in enumerate(itertools.product(*[vals for _, vals in grid])):
        overrides = common + [f"{key}={value}" for (key, _), value in zip(grid, values, strict=True)]
        run_dir = out / f"task-{index:03d}"
        try:
            cfg = load_config(config, overrides + [f"output_dir={run_dir}"])
            if problems := schedule_budget_problems(cfg):
                raise ValueError("; ".join(problems))
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
    from gigatron.planning.throughput import total_steps
    from gigatron.pretrain.run_summary import summarize_run

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
