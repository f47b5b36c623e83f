"""TP=2 and PP=2 runs of the smoke Mamba-2-Hybrid give the single-process loss curve."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, assert_ok, read_metrics, run_pretrain

pytestmark = pytest.mark.distributed

HYBRID = REPO / "configs" / "hybrid" / "smoke.yaml"
STEPS = ["train.steps=5", "train.warmup_steps=2", "checkpoint.save_final=false", "train.eval_interval=0",
         "data.num_workers=0"]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, corpus_ready):
    out = tmp_path_factory.mktemp("hybrid-single")
    assert_ok(run_pretrain(out, STEPS, config=HYBRID))
    return read_metrics(out)


@pytest.mark.parametrize("layout", [["parallel.tp=2"], ["parallel.pp=2"]], ids=["tp2", "pp2"])
def test_hybrid_loss_curve_matches_single_process(layout, single_process, tmp_path):
    assert_ok(run_pretrain(tmp_path, STEPS + layout, nproc=2, config=HYBRID))
    train = read_metrics(tmp_path)
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    for ours, ref in zip(train, single_process, strict=True):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5), (ours["step"], ours["loss"], ref["loss"])
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    assert train[-1]["loss"] < train[0]["loss"] - 0.1
