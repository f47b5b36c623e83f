"""StopHandler records the strongest stop signal; agree_on_stop falls back to the local one; the exit
code of each stop; a second Ctrl-C ends the process at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from gigatron.launcher.exit_codes import EXIT_CANCELLED, EXIT_INTERRUPTED, EXIT_PREEMPTED
from gigatron.launcher.signals import StopHandler, agree_on_stop, stop_exit_code


def _deliver(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)
    # Python runs handlers between bytecodes of the main thread; give it a few.
    for _ in range(100):
        time.sleep(0.001)


def test_handler_keeps_the_strongest_signal() -> None:
    handler = StopHandler().install()
    try:
        assert not handler.requested and handler.signal_name is None
        _deliver(signal.SIGUSR1)
        assert handler.requested and handler.signal_name == "SIGUSR1"
        _deliver(signal.SIGTERM)  # a cancellation outranks a preemption warning
        assert handler.signal_name == "SIGTERM"
        _deliver(signal.SIGUSR1)
        assert handler.signal_name == "SIGTERM"
    finally:
        handler.uninstall()


def test_each_stop_has_its_exit_code() -> None:
    assert stop_exit_code(signal.SIGUSR1) == EXIT_PREEMPTED == 75
    assert stop_exit_code(signal.SIGTERM) == EXIT_CANCELLED == 143
    assert stop_exit_code(signal.SIGINT) == EXIT_INTERRUPTED == 130


def test_uninstall_restores_previous_handler() -> None:
    seen: list[int] = []

    def previous(signum: int, frame: object) -> None:
        seen.append(signum)

    original = signal.signal(signal.SIGUSR1, previous)
    try:
        with StopHandler() as handler:
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
    handler = StopHandler().install().install()
    handler.uninstall()
    assert signal.getsignal(signal.SIGTERM) == before


def test_agree_without_process_group_returns_the_local_signal() -> None:
    assert agree_on_stop(signal.SIGTERM) == signal.SIGTERM
    assert agree_on_stop(None) is None


def test_a_second_interrupt_ends_the_process_at_once() -> None:
    script = textwrap.dedent("""
        import os, signal, time
        from gigatron.launcher.signals import StopHandler
        handler = StopHandler().install()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        print("after first:", handler.signal_name, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        print("still running", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED
    assert "after first: SIGINT" in proc.stdout and "still running" not in proc.stdout
    assert "second interrupt: stopping now" in proc.stderr and "Traceback" not in proc.stderr
