"""Growing a trained TokenFormer end to end: `gigatron grow` and `grow.checkpoint` give the same
run, and a grown run killed after a checkpoint resumes bitwise equal to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import (
    GIGATRON,
    REPO,
    assert_ok,
    pretrain_command,
    read_metrics,
    run_pretrain,
    train_losses,
)

pytestmark = pytest.mark.usefixtures("one_thread_per_run")
TOKENFORMER = REPO / "configs" / "tokenformer" / "smoke.yaml"
BASE = ["train.steps=20", "train.warmup_steps=2", "train.eval_interval=0", "checkpoint.interval=5",
        "checkpoint.keep_last=5", "data.num_workers=0", "logging.interval=1"]
GROWN = ["model.qkv_tokens=128", "model.ffn_tokens=512"]



@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_ready) -> Path:
    out = tmp_path_factory.mktemp("tokenformer-base")
    assert_ok(run_pretrain(out, [*BASE, "train.steps=10"], config=TOKENFORMER))
    return out


@pytest.fixture(scope="module")
def grown_run(base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenformer-grown")
    proc = run_pretrain(out, [*BASE, *GROWN, f"grow.checkpoint={base}"], config=TOKENFORMER)
    assert_ok(proc)
    assert "[grow] starting from" in proc.stdout
    return out


def test_grow_command_and_grow_from_give_the_same_run(base, grown_run, tmp_path):
    cli = subprocess.run([*GIGATRON, "grow", str(base), "--qkv-tokens", "128",
                          "--ffn-tokens", "512", "--out", str(tmp_path / "grown")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert_ok(cli)
    assert "(preserve); logits moved by at most" in cli.stdout
    proc = subprocess.run(pretrain_command(tmp_path / "run", BASE, config=tmp_path / "grown" / "config.yaml")
                          + ["--resume-from", str(tmp_path / "grown")], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert_ok(proc)
    assert train_losses(tmp_path / "run") == train_losses(grown_run)
    assert sorted(train_losses(grown_run)) == list(range(11, 21))
    # The grown model's config must be the one resumed: without the kept Θ scales it is refused.
    wrong = run_pretrain(tmp_path / "wrong", [*BASE, *GROWN, f"checkpoint.resume={tmp_path / 'grown'}"],
                         config=TOKENFORMER)
    assert wrong.returncode == 2 and "model.qkv_scale_tokens: checkpoint 64, config None" in wrong.stderr


def test_a_grown_run_killed_after_a_checkpoint_resumes_bitwise(base, grown_run, tmp_path):
    out = tmp_path / "killed"
    command = pretrain_command(out, [*BASE, *GROWN, f"grow.checkpoint={base}"], config=TOKENFORMER, fresh=True)
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() == "step_00000015":
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run was not killed after its step-15 checkpoint"
    resumed = run_pretrain(out, [*BASE, *GROWN, f"grow.checkpoint={base}"], config=TOKENFORMER)
    assert_ok(resumed)
    assert "holds this run's own checkpoint" not in resumed.stdout  # auto-resume of its own dir
    assert "[grow] starting from" not in resumed.stdout
    assert train_losses(out) == train_losses(grown_run)


def test_a_restarted_growth_keeps_the_weights_and_starts_a_new_schedule(base, tmp_path):
    # The authors' incremental scaling: the grown weights, then step 0, a new warmup, fresh AdamW
    # state and the data from its start (grow.schedule=restart).
    out = tmp_path / "restart"
    proc = run_pretrain(out, [*BASE, *GROWN, "train.steps=4", f"grow.checkpoint={base}", "grow.schedule=restart"],
                        config=TOKENFORMER)
    assert_ok(proc)
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[0]["lr"] == pytest.approx(2.0e-3 / 2)  # the first of 2 warmup steps, as a new run
    state = json.loads((out / "checkpoints" / "step_00000004" / "trainer_state.json").read_text())
    assert state["loader"]["consumed_samples"] == 4 * 8 and state["tokens"] == 4 * 8 * 128
    # The weights are the trained ones: the first loss is the base run's late loss, not a new model's.
    base_losses = train_losses(base)
    assert records[0]["loss"] < base_losses[1] - 0.2
