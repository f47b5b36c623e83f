"""TokenFormer under parallelism: Pattention with split tokens equals TP=1; TP=2, PP=2 and ZeRO-2
training runs give the single-process loss curve."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import GIGATRON, REPO, BackgroundRun, assert_ok, finish_all, read_metrics, run_pretrain

pytestmark = pytest.mark.distributed

TOKENFORMER = REPO / "configs" / "tokenformer" / "smoke.yaml"
STEPS = ["train.steps=5", "train.warmup_steps=2", "checkpoint.save_final=false", "train.eval_interval=0",
         "data.num_workers=0"]


def test_pattention_with_tokens_split_over_two_ranks_equals_one_rank():
    worker = REPO / "tests" / "distributed" / "pattention_tp_worker.py"
    proc = subprocess.run([*GIGATRON, "launch", "--nproc", "2", "--", *GIGATRON, "--script",
                           str(worker)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert_ok(proc)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, corpus_ready):
    runs = finish_all({tied: BackgroundRun(tmp_path_factory.mktemp(f"tokenformer-tied-{tied}"),
                                           [*STEPS, f"model.tie_embeddings={str(tied).lower()}"],
                                           config=TOKENFORMER, threads=1)
                       for tied in (True, False)})
    return {tied: read_metrics(out) for tied, out in runs.items()}


@pytest.mark.parametrize(("layout", "tied"), [
    (["parallel.tp=2", "parallel.sequence_parallel=true", "train.recompute=full", "train.compile=true",
      "train.compile_backend=aot_eager"], True),
    # the output loss in chunks, through the head tied to the embedding
    (["parallel.zero_stage=2", "train.loss_chunk_tokens=40"], True),
    (["parallel.pp=2", "train.recompute=selective", "train.recompute_modules=[core_attn,mlp,layernorm]"], False),
], ids=["tp2-sp-recompute-full-compile", "zero2-dp2-chunked-loss", "pp2-untied-recompute-selective"])
def test_tokenformer_loss_curve_matches_single_process(layout, tied, single_process, tmp_path):
    overrides = [*STEPS, *layout, f"model.tie_embeddings={str(tied).lower()}"]
    assert_ok(run_pretrain(tmp_path, overrides, nproc=2, config=TOKENFORMER))
    train, reference = read_metrics(tmp_path), single_process[tied]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    for ours, ref in zip(train, reference, strict=True):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5), (ours["step"], ours["loss"], ref["loss"])
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    assert train[-1]["loss"] < train[0]["loss"] - 0.1
