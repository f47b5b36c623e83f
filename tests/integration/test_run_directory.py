"""One run per output_dir: a second run is refused while the first lives, a dead run's lock is taken
over, a requeued SLURM job is not blocked by its own lock; `checkpoint.resume=none` over an earlier
run's checkpoints is refused unless `checkpoint.overwrite` moves them aside."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gigatron.pretrain.run_directory import LOCK_NAME, RunDirectoryBusy, acquire
from tests.conftest import REPO, assert_ok, pretrain_command, read_metrics, run_pretrain

SHORT = ["train.steps=2", "train.eval_interval=0", "data.num_workers=0"]


def _wait_for(condition, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the first run ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _long_run(output_dir: Path) -> subprocess.Popen:
    """A run that trains for minutes, in its own process group (a fresh interpreter, so that
    SIGKILL to the group kills the trainer itself)."""
    command = pretrain_command(output_dir, ["train.steps=100000", "train.eval_interval=0", "data.num_workers=0",
                                            "checkpoint.interval=0", "checkpoint.save_final=false"], fresh=True)
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def test_a_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path, corpus_ready):
    first = _long_run(tmp_path)
    try:
        _wait_for(lambda: (tmp_path / "metrics.jsonl").is_file() and read_metrics(tmp_path), 240, first)
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        second = run_pretrain(tmp_path, SHORT)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is in use by another run: pid {holder['pid']} on host {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None, "the refused run must not disturb the first"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert (tmp_path / LOCK_NAME).is_file(), "SIGKILL leaves the lock behind"
    third = run_pretrain(tmp_path, SHORT)
    assert_ok(third)
    assert f"taking over the lock on {tmp_path} from pid {holder['pid']}" in third.stdout
    assert "is no longer running on this host" in third.stdout
    assert not (tmp_path / LOCK_NAME).exists(), "a finished run releases its lock"


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_earlier_attempt(tmp_path, corpus_ready):
    tmp_path.mkdir(exist_ok=True)
    earlier = {"host": "node-of-the-first-attempt", "pid": 1, "slurm_job_id": "424242",
               "started": "2026-12-04T00:00:00Z"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(earlier))
    proc = subprocess.run(pretrain_command(tmp_path, SHORT), capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "SLURM_JOB_ID": "424242"})
    assert_ok(proc)
    assert "an earlier attempt of this SLURM job (424242, requeued)" in proc.stdout


def test_a_lock_held_by_a_live_process_is_refused_and_a_reused_pid_is_not(tmp_path):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        holder = {"host": socket.gethostname(), "pid": alive.pid, "slurm_job_id": None, "started": "then"}
        (tmp_path / LOCK_NAME).write_text(json.dumps(holder))
        with pytest.raises(RunDirectoryBusy, match=f"pid {alive.pid} on host"):
            acquire(tmp_path, log=lambda _t: None)
        # The same pid with a heartbeat 20 minutes old is another process that got the number.
        old = time.time() - 1200
        os.utime(tmp_path / LOCK_NAME, (old, old))
        notes: list[str] = []
        lock = acquire(tmp_path, log=notes.append)
        assert "is another process now" in notes[0]
        lock.release()
        assert not (tmp_path / LOCK_NAME).exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_lock_of_another_host_without_slurm_holds_until_its_heartbeat_stops(tmp_path):
    holder = {"host": "another-host", "pid": 7, "slurm_job_id": None, "started": "then"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(RunDirectoryBusy, match="pid 7 on host another-host"):
        acquire(tmp_path, log=lambda _t: None)
    old = time.time() - 1200
    os.utime(tmp_path / LOCK_NAME, (old, old))
    notes: list[str] = []
    acquire(tmp_path, log=notes.append).release()
    assert "heartbeat stopped" in notes[0]


def test_starting_over_needs_overwrite_which_moves_the_earlier_run_aside(tmp_path, corpus_ready):
    assert_ok(run_pretrain(tmp_path, SHORT))
    fresh = run_pretrain(tmp_path, [*SHORT, "checkpoint.resume=none"])
    assert fresh.returncode == 2, fresh.stderr[-2000:]
    assert f"checkpoint.resume=none, but {tmp_path / 'checkpoints'} holds checkpoints" in fresh.stderr
    assert "checkpoint.overwrite=true" in fresh.stderr and "new output_dir" in fresh.stderr
    assert (tmp_path / "checkpoints" / "step_00000002").is_dir(), "a refused start leaves the checkpoints"
    over = run_pretrain(tmp_path, ["train.steps=1", "train.eval_interval=0", "data.num_workers=0",
                                   "checkpoint.resume=none", "checkpoint.overwrite=true"])
    assert_ok(over)
    assert "moved the earlier run aside" in over.stdout
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("checkpoints.previous-")]
    assert len(aside) == 1 and (aside[0] / "step_00000002").is_dir()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1], "the new run's metrics start afresh"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000001"
