"""Ctrl-C as a terminal sends it (SIGINT to the foreground process group): the run saves, says where
in one line, exits 130 within seconds, without tracebacks; under `gigatron launch` with 2 ranks too.
Before training starts it ends at once with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gigatron.launcher.exit_codes import EXIT_INTERRUPTED
from tests.conftest import REPO, _run_env, pretrain_command, read_metrics

LONG = ["train.steps=100000", "train.eval_interval=0", "checkpoint.interval=0", "data.num_workers=2"]


def _start(output_dir: Path, nproc: int) -> subprocess.Popen:
    # A session of its own stands for the terminal: its process group is the foreground group.
    return subprocess.Popen(pretrain_command(output_dir, LONG, nproc=nproc, fresh=True), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_run_env(nproc),
                            start_new_session=True)


def _wait_for_training(proc: subprocess.Popen, output_dir: Path) -> None:
    deadline = time.monotonic() + 240
    while not ((output_dir / "metrics.jsonl").is_file() and read_metrics(output_dir)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run did not start training"
        time.sleep(0.1)


@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_c_saves_says_where_and_exits_130(tmp_path, corpus_ready, nproc):
    proc = _start(tmp_path, nproc)
    try:
        _wait_for_training(proc, tmp_path)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        started = time.monotonic()
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert took < 20, f"took {took:.1f} s to stop"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    stopped = [line for line in out.splitlines() if "[stopped] SIGINT" in line]
    assert len(stopped) == 1, out[-3000:]
    step = read_metrics(tmp_path)[-1]["step"]
    tag = tmp_path / "checkpoints" / f"step_{step:08d}"
    assert f"saved step {step} to {tag}" in stopped[0]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == tag.name


def test_ctrl_c_before_training_ends_at_once_with_one_line(tmp_path, corpus_ready):
    proc = _start(tmp_path, 1)
    time.sleep(1.0)  # importing torch and building: before the first step
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "interrupted before training started; nothing was saved" in err
    assert not (tmp_path / "checkpoints").exists()
