"""Stopping a run at any moment and resuming gives bitwise the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch

from gigatron.launcher.exit_codes import EXIT_PREEMPTED
from tests.conftest import (
    REPO,
    BackgroundRun,
    assert_ok,
    final_weights,
    pretrain_command,
    read_metrics,
    run_pretrain,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_per_run")]

STEPS = 30
# Two loader workers: resume must be exact with batches prefetched by worker processes too. Dropout
# on: a resumed run must draw the same masks as the uninterrupted one (the generator state is saved,
# and nothing may draw from it on a start, as a DataLoader's base seed once did).
BASE = [f"train.steps={STEPS}", "train.eval_interval=0", "data.num_workers=2", "model.hidden_dropout=0.1"]



@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, corpus_ready):
    """The uninterrupted run, started when the module starts; it trains beside the first test's runs."""
    # One thread like every run it is compared with (module fixtures start before one_thread_per_run).
    run = BackgroundRun(tmp_path_factory.mktemp("uninterrupted"), BASE + ["checkpoint.interval=0"], threads=1)
    yield run
    run.kill()


@pytest.fixture
def uninterrupted(reference_run):
    return reference_run.wait()


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def test_resume_after_checkpoint_is_bitwise_identical(reference_run, tmp_path):
    # exit_interval stops the first invocation after step 12 with a checkpoint; the same command
    # then resumes from it (checkpoint.resume=auto) and runs to the end. The uninterrupted reference
    # trains meanwhile, without recomputation: recomputing every layer changes no arithmetic.
    command = BASE + ["checkpoint.interval=0", "train.exit_interval=12", "train.recompute=full"]
    first = run_pretrain(tmp_path, command)
    assert_ok(first)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000012"
    for _ in range(2):  # 12 -> 24 -> 30
        proc = run_pretrain(tmp_path, command)
        assert_ok(proc)
    assert "[resume]" in proc.stdout
    uninterrupted = reference_run.wait()
    assert_bitwise_equal(final_weights(tmp_path), final_weights(uninterrupted))
    losses = [r["loss"] for r in read_metrics(tmp_path)]
    assert losses == [r["loss"] for r in read_metrics(uninterrupted)]


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"run ended (exit {proc.returncode}) before the awaited state"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def _latest_step(out) -> int:
    pointer = out / "checkpoints" / "latest"
    return int(pointer.read_text().strip().split("_")[1]) if pointer.is_file() else 0


def test_sigkill_mid_run_resumes_bitwise(uninterrupted, tmp_path):
    command = BASE + ["checkpoint.interval=5"]
    proc = subprocess.Popen(pretrain_command(tmp_path, command, fresh=True), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(lambda: _latest_step(tmp_path) >= 10, 240, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = _latest_step(tmp_path)
    assert killed_at < STEPS, "the run finished before it could be killed"
    resumed = run_pretrain(tmp_path, command)
    assert_ok(resumed)
    assert f"step {killed_at}" in resumed.stdout
    assert_bitwise_equal(final_weights(tmp_path), final_weights(uninterrupted))


@pytest.mark.distributed
def test_sigusr1_saves_and_exits_with_requeue_code(tmp_path, corpus_ready):
    command = BASE + ["checkpoint.interval=0"]
    proc = subprocess.Popen(pretrain_command(tmp_path, command, nproc=2), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    try:
        _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, 240, proc)
        proc.send_signal(signal.SIGUSR1)  # to the launcher only; it forwards to both ranks
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, output[-4000:]
    saved = _latest_step(tmp_path)
    assert 3 <= saved < STEPS
    assert "[preempted] SIGUSR1" in output
    assert read_metrics(tmp_path)[-1]["step"] == saved
    resumed = run_pretrain(tmp_path, command, nproc=2)
    assert_ok(resumed)
    steps = [r["step"] for r in read_metrics(tmp_path)]
    assert steps == list(range(1, STEPS + 1))


def test_truncated_checkpoint_falls_back_to_previous(tmp_path, corpus_ready):
    command = ["train.steps=6", "train.eval_interval=0", "checkpoint.interval=3", "checkpoint.keep_last=3"]
    assert_ok(run_pretrain(tmp_path, command))
    damaged = tmp_path / "checkpoints" / "step_00000006" / "mp_rank_00_model_states.pt"
    with open(damaged, "r+b") as handle:
        handle.truncate(damaged.stat().st_size // 2)
    resumed = run_pretrain(tmp_path, ["train.steps=8", "train.eval_interval=0", "checkpoint.interval=3"])
    assert_ok(resumed)
    assert "skipping" in resumed.stdout and "step_00000006" in resumed.stdout
    assert "[resume]" in resumed.stdout and "step 3," in resumed.stdout
    assert [r["step"] for r in read_metrics(tmp_path)][-5:] == [4, 5, 6, 7, 8]


def test_resume_with_another_tokenizer_is_refused(tmp_path, corpus_ready):
    assert_ok(run_pretrain(tmp_path, ["train.steps=2", "train.eval_interval=0"]))
    # A 1024-piece default tokenizer has another fingerprint than the 2048-piece one the checkpoint used.
    proc = run_pretrain(tmp_path, ["train.steps=4", "train.eval_interval=0", "data.default_vocab_size=1024"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "was trained with tokenizer" in proc.stderr and "resume with the same tokenizer" in proc.stderr


def test_python_and_numpy_generators_are_seeded_and_saved(tmp_path, corpus_ready):
    """Every generator is seeded from train.seed (equal seeds, equal states) and saved per rank."""
    states = {}
    for name, seed in [("a", 5), ("b", 5), ("c", 6)]:
        assert_ok(run_pretrain(tmp_path / name, ["train.steps=1", "train.eval_interval=0", f"train.seed={seed}"]))
        states[name] = torch.load(tmp_path / name / "checkpoints" / "step_00000001" / "rng" / "rank_00000.pt",
                                  weights_only=False)
    assert set(states["a"]) >= {"python", "numpy", "torch"}
    for key in ("python", "numpy"):
        assert repr(states["a"][key]) == repr(states["b"][key]), f"{key} not seeded from train.seed"
        assert repr(states["a"][key]) != repr(states["c"][key]), f"{key} ignores train.seed"
