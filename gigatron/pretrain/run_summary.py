"""What a run directory says about itself: progress, loss, throughput, checkpoints, restarts."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gigatron.checkpoint.files import list_tags, read_latest
from gigatron.pretrain.log_format import format_duration
from gigatron.pretrain.run_directory import is_held

_END_STATES = {2: "stopped on a configuration or input error (exit 2)",
               3: "stopped on a numerical fault (exit 3); diagnostics in <output_dir>/faults/",
               74: "stopped: a checkpoint could not be written (exit 74)",
               75: "preempted: saved and exited 75 for a requeue",
               130: "stopped by Ctrl-C after saving (exit 130)",
               143: "cancelled (SIGTERM) after saving (exit 143)"}


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
    total_steps: int | None = None  # the budget, from the newest start record
    step_time_s: float | None = None  # median of the last 20 steps
    end_code: int | None = None  # how the newest invocation ended; None: it has not (running, or killed)
    end_fault: str | None = None  # the one-line report of a hang or a lost rank that ended it
    running: bool = False  # the run's lock is held by a live process

    @property
    def eta_s(self) -> float | None:
        """Seconds to the budget at the recent step time, or None."""
        if self.total_steps is None or self.step_time_s is None:
            return None
        return max(0, self.total_steps - self.step) * self.step_time_s

    @property
    def state(self) -> str:
        """finished, running, or how the newest invocation stopped."""
        if self.end_code is None:
            return "running" if self.running else "not running, and its last start left no end record (killed?)"
        if self.end_code == 0:
            done = self.total_steps is not None and self.step >= self.total_steps
            return "finished" if done else "stopped at train.exit_interval (exit 0); run again to continue"
        if self.end_fault:
            then = "for a requeue" if self.end_code == 75 else "on a failed rank"
            return f"ended itself {then} (exit {self.end_code}): {self.end_fault}"
        return _END_STATES.get(self.end_code, f"crashed (exit {self.end_code})")

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
    recent_times: list[float] = []
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
            summary.total_steps = record.get("total_steps", summary.total_steps)
            summary.end_code = summary.end_fault = None
        elif kind == "end":
            summary.end_code = record.get("code")
            summary.end_fault = record.get("fault")
        elif kind == "train":
            summary.step, summary.tokens, summary.loss = record["step"], record["tokens"], record["loss"]
            recent_speeds = (recent_speeds + [record["tokens_per_s"]])[-20:]
            recent_times = (recent_times + [record["step_time_s"]])[-20:]
        elif kind == "valid":
            summary.valid_loss = record["loss"]
    if recent_speeds:
        summary.tokens_per_s = statistics.median(recent_speeds)
        summary.step_time_s = statistics.median(recent_times)
    summary.running = is_held(run_dir)
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
        f"state      {s.state}",
        (f"progress   step {s.step}/{s.total_steps} ({100 * s.step / s.total_steps:.1f}%), {s.tokens:,} tokens"
         if s.total_steps else f"progress   step {s.step}, {s.tokens:,} tokens"),
        f"eta        {'n/a' if s.eta_s is None else format_duration(s.eta_s)} to the budget at "
        f"{num(s.step_time_s, '.2f')} s/step (median of the last 20 steps)",
        f"loss       train {num(s.loss, '.4f')}, validation {num(s.valid_loss, '.4f')}",
        f"speed      {num(s.tokens_per_s, ',.0f')} tokens/s (median of the last 20 steps)",
        f"restarts   {s.restarts} (started {s.starts} times)",
        f"checkpoints {', '.join(s.checkpoints) or 'none'}; latest {s.latest or 'none'}",
    ])
