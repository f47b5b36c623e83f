"""The test suite's command zygote behaves like a fresh `python` for exit codes, signals, streams and environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import GIGATRON

SCRIPT = """
import os, sys, signal, time
print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("PROBE"), flush=True)
print("err", file=sys.stderr, flush=True)
action = sys.argv[1]
if action == "exit":
    sys.exit(int(sys.argv[2]))
if action == "raise":
    raise RuntimeError("boom")
if action == "self-signal":
    os.kill(os.getpid(), signal.SIGTERM)
if action == "wait":
    signal.signal(signal.SIGUSR1, lambda *_: (print("got USR1", flush=True), os._exit(75)))
    time.sleep(60)
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(SCRIPT)
    return path


def _run(script, *args, **kwargs):
    return subprocess.run([*GIGATRON, "--script", str(script), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PROBE": "yes"}, **kwargs)


def test_zygote_serves_this_session() -> None:
    assert os.environ.get("GIGATRON_ZYGOTE"), "the session fixture did not start tests/zygote.py"


def test_exit_code_streams_environment_and_directory(script, tmp_path) -> None:
    proc = _run(script, "exit", "3", cwd=tmp_path)
    assert proc.returncode == 3
    assert f"argv ['exit', '3'] cwd {tmp_path} env yes" in proc.stdout
    assert proc.stderr.strip().endswith("err")


def test_uncaught_exception_exits_1_with_its_traceback(script) -> None:
    proc = _run(script, "raise")
    assert proc.returncode == 1 and "RuntimeError: boom" in proc.stderr


def test_death_by_signal_is_reported_as_that_signal(script) -> None:
    assert _run(script, "self-signal").returncode == -signal.SIGTERM


def test_signals_reach_the_command(script) -> None:
    proc = subprocess.Popen([*GIGATRON, "--script", str(script), "wait"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("argv")
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=30) == 75
    assert "got USR1" in proc.stdout.read()


def test_killing_the_client_kills_the_command(tmp_path) -> None:
    marker = tmp_path / "alive"
    body = tmp_path / "loop.py"
    body.write_text(f"import time, pathlib\nwhile True:\n    pathlib.Path({str(marker)!r}).touch()\n    time.sleep(0.05)\n")
    proc = subprocess.Popen([*GIGATRON, "--script", str(body)])
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    marker.unlink()
    time.sleep(0.5)
    assert not marker.exists(), "the command outlived its client"


def test_gigatron_commands_run_as_with_python_m(tmp_path) -> None:
    ours = subprocess.run([*GIGATRON, "status", str(tmp_path)], capture_output=True, text=True, timeout=60)
    fresh = subprocess.run([sys.executable, "-m", "gigatron", "status", str(tmp_path)], capture_output=True, text=True,
                           timeout=60)
    assert (ours.returncode, ours.stdout, ours.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
