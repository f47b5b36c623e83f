"""Where step metrics go: a JSONL file, TensorBoard and a progress bar, all on rank 0 only."""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch


def reset_peak_memory(device: str) -> None:
    """Start this process's peak-memory count now: the CUDA allocator's peak, or on Linux the resident
    set's high-water mark (/proc/self/clear_refs), which a forked process would otherwise carry
    over from its parent (ru_maxrss, and VmHWM before the reset, include the parent's peak)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def memory_gib(device: str) -> tuple[float, float]:
    """(current, peak) memory of this process in GiB since `reset_peak_memory`: the CUDA allocator's
    on GPU; the resident set (VmRSS, VmHWM) on the CPU (ru_maxrss where /proc is missing)."""
    if device.startswith("cuda"):
        d = torch.device(device)
        return torch.cuda.memory_allocated(d) / 2**30, torch.cuda.max_memory_allocated(d) / 2**30
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 2**20, int(fields["VmHWM"].split()[0]) / 2**20  # kB
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
        return peak, peak


class MetricsWriter:
    """Append-only metrics of one run. Inactive (every call a no-op) on ranks other than 0."""

    def __init__(self, output_dir: Path, active: bool, total_steps: int, start_step: int,
                 tensorboard: bool, progress_bar: bool) -> None:
        self.active = active
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not active:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        # Append: a resumed run continues the same file; each record carries its step.
        self._jsonl = open(output_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 - closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=start_step + 1)
        if progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             file=sys.stderr, disable=not sys.stderr.isatty())

    def log(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        """Record one step's values (numbers; None values are skipped in TensorBoard)."""
        if not self.active:
            return
        # Wall-clock time lets readers measure throughput including everything between steps.
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None and kind != "start":
            for key, value in values.items():
                if isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def advance(self, steps: int, postfix: dict[str, str]) -> None:
        """Move the progress bar."""
        if self._bar is not None:
            self._bar.update(steps)
            self._bar.set_postfix(postfix, refresh=False)

    def write_line(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.active:
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, flush=True)

    def close(self) -> None:
        """Flush and close every sink."""
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
