"""PreemptionHandler records signals; agree_on_preemption falls back to the local flag."""

from __future__ import annotations

import os
import signal
import time

from gigatron.launcher.signals import PreemptionHandler, agree_on_preemption


def _deliver(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)
    # Python runs handlers between bytecodes of the main thread; give it a few.
    for _ in range(100):
        time.sleep(0.001)


def test_handler_records_first_signal() -> None:
    handler = PreemptionHandler().install()
    try:
        assert not handler.requested and handler.signal_name is None
        _deliver(signal.SIGUSR1)
        assert handler.requested
        assert handler.signal_name == "SIGUSR1"
        _deliver(signal.SIGTERM)
        assert handler.signal_name == "SIGUSR1"
    finally:
        handler.uninstall()


def test_uninstall_restores_previous_handler() -> None:
    seen: list[int] = []

    def previous(signum: int, frame: object) -> None:
        seen.append(signum)

    original = signal.signal(signal.SIGUSR1, previous)
    try:
        with PreemptionHandler() as handler:
            assert signal.getsignal(signal.SIGUSR1) == handler._handle
            _deliver(signal.SIGUSR1)
        assert signal.getsignal(signal.SIGUSR1) is previous
        assert handler.requested and seen == []
        _deliver(signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, original)


def test_reinstall_keeps_original_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    handler = PreemptionHandler().install().install()
    handler.uninstall()
    assert signal.getsignal(signal.SIGTERM) == before


def test_agree_without_process_group_returns_local_flag() -> None:
    assert agree_on_preemption(True) is True
    assert agree_on_preemption(False) is False
