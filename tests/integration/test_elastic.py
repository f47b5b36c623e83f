"""Elastic restart: a 4-rank run stopped after a checkpoint resumes with the same config on 2 ranks
(a requeued job that came back with fewer nodes): data parallelism halves, gradient accumulation
doubles, the global batch stays, every sample is read once and the loss curve goes on as the
uninterrupted 4-rank run's."""

from __future__ import annotations

import json

import pytest

from tests.conftest import BackgroundRun, assert_ok, read_metrics, run_pretrain, train_losses

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.usefixtures("one_thread_per_run")]

STEPS = 12
BASE = [f"train.steps={STEPS}", "train.warmup_steps=2", "train.eval_interval=0", "data.num_workers=0",
        "train.micro_batch_size=2", "checkpoint.interval=3"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus_ready):
    run = BackgroundRun(tmp_path_factory.mktemp("four-ranks"), BASE, nproc=4, threads=1)
    yield run
    run.kill()


def test_a_run_resumed_on_half_the_ranks_continues_its_curve(tmp_path, uninterrupted):
    # ZeRO-1 partitions the optimizer over the DP ranks: the 2-rank run loads the checkpoint's logical
    # state. (A ZeRO-0 checkpoint is the same on every DP rank and loads as it is.)
    layout = ["parallel.zero_stage=1"]
    assert_ok(run_pretrain(tmp_path, [*BASE, *layout, "train.exit_interval=6"], nproc=4))
    resumed = run_pretrain(tmp_path, [*BASE, *layout], nproc=2)
    assert_ok(resumed)
    assert "step_00000006: step 6" in resumed.stdout and "2 ranks (tp=1 pp=1 cp=1 dp=2" in resumed.stdout
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1)), "each step trained once"
    state = json.loads((tmp_path / "checkpoints" / f"step_{STEPS:08d}" / "trainer_state.json").read_text())
    assert state["loader"]["consumed_samples"] == STEPS * 8  # the global batch of 8, kept
    reference = train_losses(uninterrupted.wait())
    losses = train_losses(tmp_path)
    for step in range(1, 7):
        # The same 4-rank run up to the stop (ZeRO-1 sums its gradient buckets in another order).
        assert losses[step] == pytest.approx(reference[step], rel=1e-6)
    for step in range(7, STEPS + 1):
        # 2 ranks x 2 accumulated micro-batches sum the same gradients in another order.
        assert losses[step] == pytest.approx(reference[step], rel=1e-4), step
