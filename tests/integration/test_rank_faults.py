"""A rank that hangs (SIGSTOP) or dies (SIGKILL) in a 4-rank run under `gigatron launch`: every rank
and the launcher stop promptly with the requeue code (75), one line names the rank (and its signal),
the hung run's live ranks leave their stacks, and running the same command again resumes from the
last checkpoint to the uninterrupted run's losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gigatron.launcher.exit_codes import EXIT_PREEMPTED
from gigatron.pretrain.watchdog import FAULTS_DIR, heartbeat_path
from tests.conftest import (
    GIGATRON,
    REPO,
    BackgroundRun,
    _run_env,
    assert_ok,
    pretrain_command,
    run_pretrain,
    train_losses,
)

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

RANKS = 4
HANG_TIMEOUT = 10
STEPS = 24
BASE = [f"train.steps={STEPS}", "train.eval_interval=0", "data.num_workers=0", "train.micro_batch_size=2",
        "checkpoint.interval=4", "logging.interval=1", f"train.hang_timeout={HANG_TIMEOUT}"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus_ready):
    run = BackgroundRun(tmp_path_factory.mktemp("uninterrupted"), BASE, nproc=RANKS)
    yield run
    run.kill()


def _rank_pid(run_dir: Path, rank: int) -> int:
    """The pid of rank `rank` of the run writing to `run_dir`, from its heartbeat (the test's
    gigatron commands are forks of a zygote, whose /proc entries name the zygote)."""
    return json.loads(heartbeat_path(run_dir, rank).read_text())["pid"]


def _start_and_wait_for_step(run_dir: Path, step: int) -> subprocess.Popen:
    # A short --grace: the frozen rank is SIGKILLed that long after the others gave up.
    launcher = subprocess.Popen(pretrain_command(run_dir, BASE, nproc=RANKS, grace=3), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_run_env(RANKS), cwd=REPO)
    deadline = time.monotonic() + 240
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            pytest.fail(f"the run ended early ({launcher.returncode}):\n{launcher.stderr.read()[-3000:]}")
        if metrics.exists() and any(json.loads(line).get("step", 0) >= step and json.loads(line)["kind"] == "train"
                                    for line in metrics.read_text().splitlines()):
            return launcher
        time.sleep(0.2)
    launcher.kill()
    pytest.fail("the run did not reach step {step}")


def _stop_within(launcher: subprocess.Popen, seconds: float) -> tuple[int, str, float]:
    started = time.monotonic()
    _, stderr = launcher.communicate(timeout=seconds + 60)
    return launcher.returncode, stderr, time.monotonic() - started


def _resume_and_compare(run_dir: Path, uninterrupted: BackgroundRun) -> None:
    assert_ok(run_pretrain(run_dir, BASE, nproc=RANKS))
    reference = train_losses(uninterrupted.wait())
    assert train_losses(run_dir) == reference  # every step, the redone ones included, bitwise


def test_a_frozen_rank_is_named_with_stacks_and_every_rank_exits_to_be_requeued(tmp_path, uninterrupted):
    launcher = _start_and_wait_for_step(tmp_path, 6)
    os.kill(_rank_pid(tmp_path, 2), signal.SIGSTOP)
    code, stderr, took = _stop_within(launcher, HANG_TIMEOUT + 60)
    assert code == EXIT_PREEMPTED, stderr[-3000:]
    assert took < HANG_TIMEOUT + 60
    assert "Traceback" not in stderr, stderr[-3000:]
    [line] = [line for line in stderr.splitlines() if "[hang]" in line]
    assert "stuck: rank 2 (" in line and "heartbeat stopped" in line, line
    [faults] = (tmp_path / FAULTS_DIR).iterdir()
    dumps = sorted(p.name for p in faults.glob("rank-*.txt"))
    assert dumps == ["rank-00000.txt", "rank-00001.txt", "rank-00003.txt"]  # a frozen process writes nothing
    # The first ranks to notice dump their threads; one whose collective failed when those left
    # dumps that traceback too: either way the file shows where it waited.
    for dump in dumps:
        stacks = (faults / dump).read_text()
        assert "rank 2" in stacks and "Thread" in stacks and "train_step" in stacks, stacks[:3000]
    assert (faults / "report.txt").read_text().strip() == line.split(" ", 2)[2]
    _resume_and_compare(tmp_path, uninterrupted)


def test_a_killed_rank_is_named_with_its_signal_and_every_rank_exits_to_be_requeued(tmp_path, uninterrupted):
    launcher = _start_and_wait_for_step(tmp_path, 6)
    os.kill(_rank_pid(tmp_path, 1), signal.SIGKILL)
    code, stderr, took = _stop_within(launcher, 60)
    assert code == EXIT_PREEMPTED, stderr[-3000:]
    assert took < 60
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "rank 1 died of SIGKILL" in stderr
    [line] = [line for line in stderr.splitlines() if "[peer lost]" in line]
    assert ": rank 1 (pid" in line and f"exiting with {EXIT_PREEMPTED}" in line, line
    status = subprocess.run([*GIGATRON, "status", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert "ended itself for a requeue (exit 75): [peer lost]" in status.stdout, status.stdout
    _resume_and_compare(tmp_path, uninterrupted)
