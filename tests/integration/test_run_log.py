"""What an operator reads: a short, timestamped log with an ETA on every step line, the resolved
config in the run directory instead of the log, no third-party noise, and `gigatron status` with
the target, the ETA and whether the run finished, is running, or how it stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import yaml

from gigatron.launcher.exit_codes import EXIT_CANCELLED
from tests.conftest import GIGATRON, REPO, _run_env, pretrain_command, read_metrics

STEPS = ["train.steps=6", "train.eval_interval=0", "logging.interval=2", "data.num_workers=0"]
STAMP = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} "


def _status(run_dir) -> str:
    proc = subprocess.run([*GIGATRON, "status", str(run_dir)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_log_is_short_stamped_and_quiet_and_status_says_finished(tmp_path, corpus_ready):
    # A fresh interpreter: the zygote would have shown (or swallowed) import-time warnings itself.
    proc = subprocess.run(pretrain_command(tmp_path, STEPS, fresh=True), capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=_run_env(1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) < 15, proc.stdout
    assert all(re.match(STAMP, line) for line in lines), proc.stdout
    steps = [line for line in lines if re.match(STAMP + r"step \d+/6 ", line)]
    assert len(steps) == 3 and all(re.search(r" eta \d+:\d\d:\d\d$", line) for line in steps), steps
    assert " 1 rank (" in proc.stdout and "1 ranks" not in proc.stdout
    assert f"resolved configuration written to {tmp_path / 'config.yaml'}" in proc.stdout
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["steps"] == 6
    for noise in ("Transformer Engine and Apex", "is deprecated", "Setting accelerator to CPU"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    status = _status(tmp_path)
    assert "state      finished" in status and "step 6/6 (100.0%)" in status and "eta        0:00:00" in status


def test_status_of_a_running_and_of_a_cancelled_run(tmp_path, corpus_ready):
    run = subprocess.Popen(pretrain_command(tmp_path, ["train.steps=100000", "train.eval_interval=0",
                                                       "data.num_workers=0"], fresh=True),
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                           env=_run_env(1))
    try:
        deadline = time.monotonic() + 240
        while not ((tmp_path / "metrics.jsonl").is_file() and len(read_metrics(tmp_path)) >= 3):
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        status = _status(tmp_path)
        assert "state      running" in status and "/100000 (" in status, status
        assert re.search(r"eta        (\d+d )?\d+:\d\d:\d\d to the budget", status), status
        os.kill(run.pid, signal.SIGTERM)
        assert run.wait(timeout=60) == EXIT_CANCELLED
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert "state      cancelled (SIGTERM) after saving (exit 143)" in _status(tmp_path)
