"""Graceful preemption: note SIGUSR1/SIGTERM, then let all ranks agree to stop at a step boundary.

SLURM sends SIGUSR1 (``--signal=USR1@120``) or SIGTERM before killing a job. Each rank may see the
signal at a different step, so the training loop calls `agree_on_preemption` at step boundaries:
if any rank was signalled, every rank saves the same checkpoint and exits with ``EXIT_PREEMPTED``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from types import FrameType
from typing import Any

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionHandler:
    """Records that a preemption signal arrived; the training loop polls `requested`.

    Usable as a context manager, which installs the default signals on entry and restores the
    previous handlers on exit. Must be installed from the main thread (a Python restriction).
    """

    def __init__(self) -> None:
        self.requested: bool = False
        self.signal_name: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def install(self, signals: Iterable[signal.Signals] = DEFAULT_SIGNALS) -> PreemptionHandler:
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
        # Runs between bytecodes of the main thread: only set flags, never log, save or raise here.
        if not self.requested:
            self.signal_name = signal.Signals(signum).name
        self.requested = True

    def __enter__(self) -> PreemptionHandler:
        if not self._previous:
            self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()


def agree_on_preemption(local_requested: bool, group: Any = None, device: Any = "cpu") -> bool:
    """True if any rank in `group` requested preemption; a collective, so call it on every rank.

    `device` must suit the group's backend: ``"cpu"`` for gloo, the rank's CUDA device for nccl.
    Without an initialised process group this simply returns `local_requested`.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return bool(local_requested)
    flag = torch.tensor([1 if local_requested else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag.item())
