"""TP=2, PP=2, ZeRO-2, ZeRO-3 and 4-rank combinations train the smoke GPT to the same losses as one process,
with activation recomputation (no change to the arithmetic), sequence parallelism (only the order of
the norm weights' gradient sums changes), the chunked output loss (the same sums, in chunks) and
compiled layers (fp32 rounding of fused kernels) in some, so the same tolerance holds."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import GIGATRON, REPO, assert_ok, read_metrics, run_pretrain

pytestmark = pytest.mark.distributed

STEPS = ["train.steps=5", "train.warmup_steps=2", "checkpoint.save_final=false", "train.eval_interval=5"]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, corpus_ready):
    out = tmp_path_factory.mktemp("single")
    assert_ok(run_pretrain(out, STEPS + ["logging.tensorboard=true"]))
    assert list((out / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard events written"
    return read_metrics(out), read_metrics(out, "valid")


def test_chunked_output_loss_split_over_two_ranks_equals_one_rank():
    worker = REPO / "tests" / "distributed" / "linear_cross_entropy_tp_worker.py"
    proc = subprocess.run([*GIGATRON, "launch", "--nproc", "2", "--", *GIGATRON, "--script", str(worker)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert_ok(proc)


@pytest.mark.parametrize(("layout", "nproc"), [
    # compiled layers (inductor; the other layout tests trace with aot_eager): the TP collectives are
    # graph breaks between compiled pieces
    (["parallel.tp=2", "train.compile=true"], 2),
    # chunks of two layers recomputed inside DeepSpeed's pipeline module
    (["parallel.pp=2", "train.recompute=full", "train.recompute_num_layers=2"], 2),
    (["parallel.zero_stage=2"], 2),
    # recomputed layers gather their ZeRO-3 partitions again in the backward pass
    (["parallel.zero_stage=3", "train.recompute=full"], 2),
    # sequence parallelism with the pipeline (activations sent between stages are sequence shards);
    # the last stage's head hands hidden states to the chunked output loss
    (["parallel.tp=2", "parallel.pp=2", "parallel.sequence_parallel=true", "train.recompute=selective",
      "train.recompute_modules=[core_attn,mlp,layernorm]", "train.loss_chunk_tokens=48"], 4),
    (["parallel.tp=2", "parallel.zero_stage=1", "parallel.sequence_parallel=true"], 4),
    (["parallel.tp=2", "parallel.zero_stage=3", "parallel.sequence_parallel=true", "train.recompute=full"], 4),
], ids=["tp2-compile", "pp2-recompute-chunks", "zero2", "zero3-recompute-full", "tp2-sp-pp2-recompute-selective-chunked-loss",
        "tp2-sp-dp2-zero1", "tp2-sp-dp2-zero3-recompute-full"])
def test_loss_curve_matches_single_process(layout, nproc, single_process, tmp_path):
    proc = run_pretrain(tmp_path, STEPS + layout, nproc=nproc)
    assert_ok(proc)
    if "train.compile=true" in layout:
        assert "[run] compile: 4 layers" in proc.stdout + proc.stderr
        assert re.search(r"\[compile\] step 1: compile: [\d.]+ s for \d+ graphs", proc.stdout + proc.stderr)
    reference, reference_valid = single_process
    train, valid = read_metrics(tmp_path), read_metrics(tmp_path, "valid")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    for ours, ref in zip(train, reference, strict=True):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5), (ours["step"], ours["loss"], ref["loss"])
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
        assert ours["lr"] == pytest.approx(ref["lr"], rel=1e-12)
    assert valid[0]["loss"] == pytest.approx(reference_valid[0]["loss"], rel=1e-5)
    # The model really learned something, so equal curves are not equal flat lines.
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
