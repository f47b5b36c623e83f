"""Context parallelism: ring, Ulysses and hybrid attention equal naive full attention on 2 and 4 gloo
ranks (causal and not, zigzag and contiguous, GQA, padded lengths), and CP training of the GPT
baseline, the Mamba-2-Hybrid (ring and Ulysses; Mamba layers through the all-to-all) and TokenFormer
reproduces the single-process loss curve, also combined with TP=2 on 4 ranks (the hybrid's ring case)."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import (
    GIGATRON,
    REPO,
    BackgroundRun,
    assert_ok,
    assert_same_curves,
    finish_all,
    read_metrics,
    run_pretrain,
)

pytestmark = pytest.mark.distributed

STEPS = ["train.steps=5", "train.warmup_steps=2", "checkpoint.save_final=false", "train.eval_interval=5",
         "data.num_workers=0"]
CONFIGS = {"gpt": REPO / "configs" / "gpt" / "smoke.yaml", "hybrid": REPO / "configs" / "hybrid" / "smoke.yaml",
           "tokenformer": REPO / "configs" / "tokenformer" / "smoke.yaml"}
# RoPE in the hybrid's attention layers too, so positions under the zigzag split are exercised; 4 Mamba groups
# so that TP=2 x CP=2 can split them.
FAMILY_OVERRIDES = {"gpt": [], "hybrid": ["model.position_embedding=rope", "model.ngroups=4"], "tokenformer": []}


@pytest.mark.parametrize("ranks", [2, 4])
def test_attention_over_split_sequences_equals_full_attention(ranks):
    worker = REPO / "tests" / "distributed" / "cp_attention_worker.py"
    proc = subprocess.run([*GIGATRON, "launch", "--nproc", str(ranks), "--", *GIGATRON, "--script",
                           str(worker)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert_ok(proc)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, corpus_ready):
    # All three at once, one thread each (the comparisons allow fp32 rounding, rel 1e-5).
    return finish_all({family: BackgroundRun(tmp_path_factory.mktemp(f"cp1-{family}"),
                                             [*STEPS, *FAMILY_OVERRIDES[family]], config=config, threads=1)
                       for family, config in CONFIGS.items()})


@pytest.mark.parametrize(("family", "layout", "nproc"), [
    # compiled: the ring's exchanges are graph breaks inside the compiled attention core
    ("gpt", ["parallel.cp=2", "train.recompute=selective", "train.recompute_modules=[core_attn]",
             "train.compile=true", "train.compile_backend=aot_eager"], 2),
    ("hybrid", ["parallel.cp=2", "parallel.cp_attention=ulysses"], 2),
    ("tokenformer", ["parallel.cp=2", "parallel.cp_zigzag=false"], 2),
    ("hybrid", ["parallel.cp=2", "parallel.tp=2", "parallel.sequence_parallel=true", "train.recompute=full",
                "train.loss_chunk_tokens=40"], 4),
    ("gpt", ["parallel.cp=4", "parallel.cp_attention=hybrid", "parallel.cp_ulysses=2"], 4),
], ids=["gpt-ring-recompute-attention-compile", "hybrid-ulysses", "tokenformer-contiguous", "hybrid-ring-cp2-tp2-sp-recompute-full-chunked-loss",
        "gpt-hybrid-cp4"])
def test_context_parallel_training_matches_single_process(family, layout, nproc, single_process, tmp_path):
    overrides = [*STEPS, *FAMILY_OVERRIDES[family], *layout]
    assert_ok(run_pretrain(tmp_path, overrides, nproc=nproc, config=CONFIGS[family]))
    assert_same_curves(tmp_path, single_process[family])
    train = read_metrics(tmp_path)
    assert train[-1]["loss"] < train[0]["loss"] - 0.1
