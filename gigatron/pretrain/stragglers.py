"""Straggler detection: which rank makes every step wait.

Ranks wait for each other in every collective, so their step times are all alike; what tells a slow
rank apart is the work it does on its own before the first collective of the step: reading its
batch and the forward pass (pure DP: no collective inside; with TP, PP or CP the forward holds
collectives, and the rank all of them wait for still shows the most). Every
`faults.straggler_interval` steps the ranks all-gather their mean step time, data wait and own work
over the interval (one collective of 3 numbers per rank); a rank whose own work exceeds
`faults.straggler_factor` x the median of all ranks' (the lower median, so that with 2 ranks the
faster one is the yardstick) over the whole interval is named in one log line and in a `stragglers`
metrics record.
"""

from __future__ import annotations

import socket
import statistics
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class StragglerReport:
    """One interval's numbers: per rank (step_s, data_wait_s, own_s), and the slow ranks."""

    ranks: list[dict[str, Any]]
    median_own_s: float
    slow: list[int]


class StragglerDetector:
    """Accumulates this rank's per-step timings; `maybe_report` gathers them every `interval` steps."""

    def __init__(self, interval: int, factor: float, device: Any) -> None:
        self.interval, self.factor, self.device = interval, factor, device
        self._sums = [0.0, 0.0, 0.0]
        self._steps = 0
        self._hosts: list[str] | None = None

    def add(self, step_s: float, data_wait_s: float, own_s: float) -> None:
        """One step's wall time, time waiting for its batch, and own work (data + forward)."""
        for i, value in enumerate((step_s, data_wait_s, own_s)):
            self._sums[i] += value
        self._steps += 1

    def maybe_report(self, step: int) -> StragglerReport | None:
        """Every rank, after each step: at the end of an interval, the gathered report (same on all
        ranks), else None."""
        if self.interval <= 0 or step % self.interval or self._steps == 0:
            return None
        mine = torch.tensor([s / self._steps for s in self._sums], dtype=torch.float64)
        self._sums, self._steps = [0.0, 0.0, 0.0], 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world > 1:
            gathered = [torch.zeros(3, dtype=torch.float64, device=self.device) for _ in range(world)]
            dist.all_gather(gathered, mine.to(self.device))
            rows = [g.cpu().tolist() for g in gathered]
        else:
            rows = [mine.tolist()]
        if self._hosts is None:
            self._hosts = [socket.gethostname()] * world
            if world > 1:
                dist.all_gather_object(self._hosts, socket.gethostname())
        hosts = self._hosts
        median = statistics.median_low(own for _, _, own in rows)
        slow = [rank for rank, (_, _, own) in enumerate(rows) if world > 1 and own > self.factor * median]
        ranks = [{"rank": r, "host": hosts[r], "step_s": row[0], "data_wait_s": row[1], "own_s": row[2]}
                 for r, row in enumerate(rows)]
        return StragglerReport(ranks, median, slow)


def describe(report: StragglerReport, interval: int) -> str:
    """'[straggler] rank 2 (host n3): 0.310 s of own work per step (data 0.002 s) vs median 0.101 s (3.1x) ...'."""
    parts = []
    for rank in report.slow:
        r = report.ranks[rank]
        ratio = r["own_s"] / report.median_own_s if report.median_own_s > 0 else float("inf")
        parts.append(f"rank {rank} (host {r['host']}): {r['own_s']:.3f} s of own work per step (data wait "
                     f"{r['data_wait_s']:.3f} s) vs the median {report.median_own_s:.3f} s ({ratio:.1f}x)")
    return (f"[straggler] over the last {interval} steps: " + "; ".join(parts)
            + "; every step waits for it: check that host (thermal throttling, a failing disk, another job)")


# Test hook (docs/fault-tolerance.md): GIGATRON_INJECT_SLEEP="2:0.3" makes rank 2 sleep 0.3 s before
# each micro-batch's forward pass, as a slow node would.
INJECT_SLEEP_ENV = "GIGATRON_INJECT_SLEEP"


def injected_sleep(rank: int, text: str | None = None) -> float:
    """Seconds rank `rank` sleeps before each forward, from `text` or $GIGATRON_INJECT_SLEEP."""
    import os

    text = os.environ.get(INJECT_SLEEP_ENV, "") if text is None else text
    for item in filter(None, (part.strip() for part in text.split(","))):
        who, sep, seconds = item.partition(":")
        if not sep:
            raise ValueError(f"{INJECT_SLEEP_ENV}: {item!r} must look like RANK:SECONDS, e.g. 2:0.3")
        if int(who) == rank:
            return float(seconds)
    return 0.0
