"""Stopping on a signal: note it, then let all ranks agree to stop at a step boundary.

What a signal asks of a run:
- SIGUSR1 is preemption: SLURM's warning before the time limit (``#SBATCH --signal=B:USR1@120``)
  or ``scancel --signal=USR1``. Every rank saves the same checkpoint and exits with
  ``EXIT_PREEMPTED`` (75); the batch script requeues the job.
- SIGTERM is cancellation: ``scancel JOB``, ``kill``, the end of a time limit without a warning, or
  SLURM requeueing the job itself (``scontrol requeue``, PreemptMode=REQUEUE). The ranks save if
  they can and exit with ``EXIT_CANCELLED`` (143); the batch script does not requeue (SLURM does,
  when the requeue was its own decision).
- SIGINT (Ctrl-C) stops like SIGTERM with ``EXIT_INTERRUPTED`` (130); a second SIGINT ends the
  process at once, without saving.

Each rank may see a signal at a different step, so the training loop calls `agree_on_stop` at step
boundaries: one collective, after which every rank acts on the same signal (the strongest seen:
an interrupt, then a cancellation, then a preemption warning).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from types import FrameType
from typing import Any

from gigatron.launcher.exit_codes import EXIT_CANCELLED, EXIT_INTERRUPTED, EXIT_PREEMPTED

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
# Precedence when ranks saw different signals; 0 means none.
_STRENGTH: dict[signal.Signals, int] = {signal.SIGUSR1: 1, signal.SIGTERM: 2, signal.SIGINT: 3}
_EXIT_CODES: dict[signal.Signals, int] = {signal.SIGUSR1: EXIT_PREEMPTED, signal.SIGTERM: EXIT_CANCELLED,
                                          signal.SIGINT: EXIT_INTERRUPTED}


def stop_exit_code(sig: signal.Signals) -> int:
    """The exit code of a run stopped by `sig`: 75 (requeue) for SIGUSR1, 143 for SIGTERM, 130 for SIGINT."""
    return _EXIT_CODES[signal.Signals(sig)]


class StopHandler:
    """Records the stop signals that arrive; the training loop polls `signal` (the strongest seen).

    Usable as a context manager, which installs the stop signals on entry and restores the previous
    handlers on exit. Must be installed from the main thread (a Python restriction).
    """

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._interrupts = 0
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether any stop signal arrived."""
        return self.signal is not None

    @property
    def signal_name(self) -> str | None:
        """'SIGUSR1', 'SIGTERM' or 'SIGINT' (the strongest seen), or None."""
        return None if self.signal is None else self.signal.name

    def install(self, signals: Iterable[signal.Signals] = STOP_SIGNALS) -> StopHandler:
        """Install the recording handler for `signals`, remembering the handlers it replaces."""
        for sig in signals:
            sig = signal.Signals(sig)
            previous = signal.signal(sig, self._handle)
            # Re-installing must not overwrite the original handler with our own.
            self._previous.setdefault(sig, previous)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were in place before `install`."""
        for sig, previous in self._previous.items():
            # None means the old handler was not set from Python; the default is the closest match.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Runs between bytecodes of the main thread: set flags only (no logging, saving or raising),
        # except that a second Ctrl-C means "now": one line, and the process ends without unwinding.
        sig = signal.Signals(signum)
        if sig == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                os.write(2, b"\ngigatron: second interrupt: stopping now, without saving\n")
                os._exit(EXIT_INTERRUPTED)
        if self.signal is None or _STRENGTH[sig] > _STRENGTH[self.signal]:
            self.signal = sig

    def __enter__(self) -> StopHandler:
        if not self._previous:
            self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()


def agree_on_stop(local: signal.Signals | None, group: Any = None, device: Any = "cpu") -> signal.Signals | None:
    """The strongest stop signal any rank in `group` saw, or None; a collective, so call it on every rank.

    `device` must suit the group's backend: ``"cpu"`` for gloo, the rank's CUDA device for nccl.
    Without an initialised process group this simply returns `local`.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return local
    strength = 0 if local is None else _STRENGTH[signal.Signals(local)]
    flag = torch.tensor([strength], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    agreed = int(flag.item())
    return next((sig for sig, s in _STRENGTH.items() if s == agreed), None)
