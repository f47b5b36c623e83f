"""TP=2 and PP=2 runs of the smoke Mamba-2-Hybrid (and TP=2 of Mamba-1) give the single-process loss curve,
with activation recomputation on (it changes no arithmetic)."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, BackgroundRun, assert_ok, finish_all, read_metrics, run_pretrain

pytestmark = pytest.mark.distributed

HYBRID = REPO / "configs" / "hybrid" / "smoke.yaml"
STEPS = ["train.steps=5", "train.warmup_steps=2", "checkpoint.save_final=false", "train.eval_interval=0",
         "data.num_workers=0"]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, corpus_ready):
    out = tmp_path_factory.mktemp("hybrid-single")
    assert_ok(run_pretrain(out, STEPS, config=HYBRID))
    return read_metrics(out)


@pytest.mark.parametrize("layout", [
    ["parallel.tp=2", "train.recompute=selective", "train.recompute_modules=[mamba,core_attn,mlp,layernorm]"],
    ["parallel.pp=2", "train.recompute=full", "train.recompute_method=block", "train.recompute_num_layers=2"],
], ids=["tp2-recompute-selective", "pp2-recompute-block"])
def test_hybrid_loss_curve_matches_single_process(layout, single_process, tmp_path):
    assert_ok(run_pretrain(tmp_path, STEPS + layout, nproc=2, config=HYBRID))
    train = read_metrics(tmp_path)
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    for ours, ref in zip(train, single_process, strict=True):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5), (ours["step"], ours["loss"], ref["loss"])
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    assert train[-1]["loss"] < train[0]["loss"] - 0.1


def test_mamba1_with_recompute_on_tp2_matches_one_process_without(tmp_path):
    """The Mamba-1 family: its mixer recomputed on two TP ranks, against one plain process."""
    mamba = [*STEPS, "model.family=mamba", "model.attention_ratio=0", "model.mlp_ratio=0"]
    runs = {"single": BackgroundRun(tmp_path / "single", mamba, config=HYBRID, threads=1),
            "tp2": BackgroundRun(tmp_path / "tp2", [*mamba, "parallel.tp=2", "train.recompute=selective",
                                                    "train.recompute_modules=[mamba,layernorm]"],
                                 nproc=2, config=HYBRID, threads=1)}
    done = finish_all(runs)
    single, tp2 = read_metrics(done["single"]), read_metrics(done["tp2"])
    for ours, ref in zip(tp2, single, strict=True):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5), (ours["step"], ours["loss"], ref["loss"])
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    assert len(tp2) == 5
