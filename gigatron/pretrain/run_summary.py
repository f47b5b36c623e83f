"""What a run directory says about itself: progress, loss, throughput, checkpoints, restarts."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gigatron.checkpoint.files import list_tags, read_latest


@dataclass
class RunSummary:
    """Facts read from `<run>/metrics.jsonl` and `<run>/checkpoints` (or `checkpoint.dir`)."""

    run_dir: Path
    step: int = 0
    tokens: int = 0
    loss: float | None = None
    valid_loss: float | None = None
    tokens_per_s: float | None = None
    starts: int = 0
    checkpoints: list[str] = field(default_factory=list)
    latest: str | None = None

    @property
    def restarts(self) -> int:
        """Invocations after the first (requeues, resumes after crashes, exit_interval jobs)."""
        return max(0, self.starts - 1)


def summarize_run(run_dir: str | Path) -> RunSummary:
    """Read a run directory; raises FileNotFoundError naming what is missing."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found: is {run_dir} the output_dir of a gigatron run?")
    summary = RunSummary(run_dir)
    recent_speeds: list[float] = []
    for line in metrics.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record: dict[str, Any] = json.loads(line)
        except ValueError:
            # A line cut off by a crash mid-write; everything before it is still good.
            continue
        kind = record.get("kind")
        if kind == "start":
            summary.starts += 1
        elif kind == "train":
            summary.step, summary.tokens, summary.loss = record["step"], record["tokens"], record["loss"]
            recent_speeds = (recent_speeds + [record["tokens_per_s"]])[-20:]
        elif kind == "valid":
            summary.valid_loss = record["loss"]
    if recent_speeds:
        summary.tokens_per_s = statistics.median(recent_speeds)
    ckpt_dir = run_dir / "checkpoints"
    summary.checkpoints = list_tags(ckpt_dir)
    summary.latest = read_latest(ckpt_dir)
    return summary


def format_summary(s: RunSummary) -> str:
    """A few human lines."""
    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    return "\n".join([
        f"run        {s.run_dir}",
        f"progress   step {s.step}, {s.tokens:,} tokens",
        f"loss       train {num(s.loss, '.4f')}, validation {num(s.valid_loss, '.4f')}",
        f"speed      {num(s.tokens_per_s, ',.0f')} tokens/s (median of the last 20 steps)",
        f"restarts   {s.restarts} (started {s.starts} times)",
        f"checkpoints {', '.join(s.checkpoints) or 'none'}; latest {s.latest or 'none'}",
    ])
