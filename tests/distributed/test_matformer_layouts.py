"""MatFormer under parallelism and end to end: sum and sample training on TP=2 and ZeRO-2 give the
single-process curves (total and per-granularity losses); submodels extracted from TP=1 and TP=2
checkpoints compute what the nested model computes at the same widths (the TP=2 model itself, run
on two ranks); the extracted model trains and generates as an ordinary model; `matformer eval`
and speculative `generate` work from the command line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import GIGATRON, REPO, BackgroundRun, assert_ok, finish_all, read_metrics, run_pretrain

pytestmark = pytest.mark.distributed

CONFIG = REPO / "configs" / "matformer" / "smoke.yaml"
STEPS = ["train.steps=5", "train.warmup_steps=2", "train.eval_interval=5", "data.num_workers=0"]
MODES = {"sum": ["matformer.mode=sum", "matformer.weights=[1,1,1,2]"],
         "sample": ["matformer.mode=sample", "matformer.probabilities=[0.4,0.3,0.2,0.1]"]}
MIXED = "0.125,0.25,0.5,1"


def gigatron(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*GIGATRON, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, corpus_ready) -> dict[str, Path]:
    return finish_all({mode: BackgroundRun(tmp_path_factory.mktemp(f"matformer-{mode}"), [*STEPS, *overrides],
                                           config=CONFIG, threads=1)
                       for mode, overrides in MODES.items()})


@pytest.fixture(scope="module")
def tp2_sum_run(tmp_path_factory, single_process) -> Path:
    out = tmp_path_factory.mktemp("matformer-tp2-sum")
    assert_ok(run_pretrain(out, [*STEPS, *MODES["sum"], "parallel.tp=2"], nproc=2, config=CONFIG))
    return out


def _assert_same_curves(run: Path, reference: Path) -> None:
    train, ref = read_metrics(run), read_metrics(reference)
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    for ours, theirs in zip(train, ref, strict=True):
        keys = sorted(k for k in theirs if k.startswith("loss"))
        assert keys == sorted(k for k in ours if k.startswith("loss"))
        for key in keys:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), (ours["step"], key, ours[key], theirs[key])
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4)
    valid, valid_ref = read_metrics(run, "valid"), read_metrics(reference, "valid")
    assert valid[0].keys() == valid_ref[0].keys()
    assert {"loss_ffn0.125", "loss_ffn0.25", "loss_ffn0.5", "loss_ffn1"} <= valid[0].keys()
    for key in valid_ref[0]:
        if key.startswith("loss"):
            assert valid[0][key] == pytest.approx(valid_ref[0][key], rel=1e-5), key


def test_sum_mode_logs_every_granularity_and_learns(single_process):
    records = read_metrics(single_process["sum"])
    for rec in records:
        losses = [rec[f"loss_ffn{g}"] for g in ("0.125", "0.25", "0.5", "1")]
        weighted = (losses[0] + losses[1] + losses[2] + 2 * losses[3]) / 5
        assert rec["loss"] == pytest.approx(weighted, rel=1e-6)
    assert records[-1]["loss"] < records[0]["loss"] - 0.1
    sampled = [next(k for k in rec if k.startswith("loss_ffn")) for rec in read_metrics(single_process["sample"])]
    assert len(sampled) == 5 and len(set(sampled)) > 1  # one granularity per step, not always the same


def test_sum_mode_on_tp2_matches_single_process(tp2_sum_run, single_process):
    _assert_same_curves(tp2_sum_run, single_process["sum"])


@pytest.mark.parametrize(("mode", "layout"), [
    # compiled: each sampled granularity is its own graph
    ("sample", ["parallel.tp=2", "parallel.sequence_parallel=true", "train.recompute=selective",
                "train.recompute_modules=[mlp]", "train.compile=true",
                "train.compile_backend=aot_eager"]),
    # every granularity's backward recomputes its own width
    ("sum", ["parallel.zero_stage=2", "train.recompute=full"]),
    ("sample", ["parallel.zero_stage=2"]),
], ids=["sample-tp2-sp-recompute-mlp-compile", "sum-zero2-dp2-recompute-full", "sample-zero2-dp2"])
def test_training_matches_single_process(mode, layout, single_process, tmp_path):
    overrides = [*STEPS, *MODES[mode], *layout, "checkpoint.save_final=false"]
    assert_ok(run_pretrain(tmp_path, overrides, nproc=2, config=CONFIG))
    _assert_same_curves(tmp_path, single_process[mode])


def _extracted_logits(ckpt: Path, widths: str, out: Path) -> torch.Tensor:
    from gigatron.checkpoint.reader import load_checkpoint_model
    from gigatron.checkpoint.verify import fixed_batch
    from gigatron.inference.matformer_extract import extract

    values = [float(v) for v in widths.split(",")]
    extract(ckpt, values[0] if len(values) == 1 else values, out, tolerance=1e-6, log=lambda *_: None)
    cfg, model = load_checkpoint_model(out)
    assert cfg.model.matformer is None
    with torch.no_grad():
        return model(fixed_batch(cfg.model.vocab_size, cfg.data.seq_len))


def test_submodels_extracted_from_a_tp2_checkpoint_equal_the_tp2_nested_model(tp2_sum_run, tmp_path):
    worker = REPO / "tests" / "distributed" / "matformer_tp_worker.py"
    logits_file = tmp_path / "tp2_logits.pt"
    proc = gigatron("launch", "--nproc", "2", "--", *GIGATRON, "--script", str(worker), str(tp2_sum_run),
                    str(logits_file), "0.25", MIXED)
    assert_ok(proc)
    nested = torch.load(logits_file, weights_only=True)
    for i, widths in enumerate(("0.25", MIXED)):
        extracted = _extracted_logits(tp2_sum_run, widths, tmp_path / f"extracted-{i}")
        assert float((extracted - nested[widths]).abs().max()) <= 1e-6, widths


def test_hybrid_submodels_on_two_tp_ranks_equal_their_extraction(tmp_path):
    """The hybrid's nested MLPs (squared ReLU) under TP=2, from a freshly initialised checkpoint."""
    from gigatron.checkpoint.consolidated import InMemoryCheckpoint, write_consolidated
    from gigatron.config import config_from_dict
    from gigatron.models.layers.factory import LayerFactory
    from gigatron.models.layers.init import initialize_parameters
    from gigatron.models.registry import build_model

    cfg = config_from_dict({"model": {"family": "hybrid", "vocab_size": 64, "hidden_size": 32, "num_layers": 6,
                                      "pattern": "M-M*--", "d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 8,
                                      "num_heads": 4, "num_kv_heads": 2, "ffn_hidden_size": 128,
                                      "matformer": {"blocks": 2}},
                            "train": {"steps": 1}, "data": {"seq_len": 16}})
    model = build_model(cfg.model, LayerFactory())
    initialize_parameters(model, seed=3)
    tensors = {name: p.detach().clone() for name, p in model.named_parameters()}
    write_consolidated(InMemoryCheckpoint(tmp_path, cfg, tensors), tmp_path / "hybrid", log=lambda *_: None)
    worker = REPO / "tests" / "distributed" / "matformer_tp_worker.py"
    logits_file = tmp_path / "tp2_logits.pt"
    assert_ok(gigatron("launch", "--nproc", "2", "--", *GIGATRON, "--script", str(worker), str(tmp_path / "hybrid"),
                       str(logits_file), "0.125", "0.25,0.5,1", "1"))
    nested = torch.load(logits_file, weights_only=True)
    for i, widths in enumerate(("0.125", "0.25,0.5,1", "1")):
        extracted = _extracted_logits(tmp_path / "hybrid", widths, tmp_path / f"extracted-{i}")
        assert float((extracted - nested[widths]).abs().max()) <= 1e-6, widths
    assert float((nested["0.125"] - nested["1"]).abs().max()) > 1e-3  # the submodels are different functions


def test_extracted_submodel_is_an_ordinary_model_that_trains_and_generates(single_process, tmp_path):
    from gigatron.checkpoint.reader import load_checkpoint_model
    from gigatron.checkpoint.verify import fixed_batch
    from gigatron.models.layers.nested_ffn import ffn_granularity

    run = single_process["sum"]
    proc = gigatron("matformer", "extract", str(run), "--target-params", "1.2e6", "--out", str(tmp_path / "mix"))
    assert_ok(proc)
    assert "alternatives considered" in proc.stdout and "span 0" in proc.stdout
    cfg, model = load_checkpoint_model(tmp_path / "mix")
    sizes = cfg.model.ffn_hidden_sizes
    assert sizes == sorted(sizes) and len(set(sizes)) > 1  # non-decreasing, mixed
    _, nested = load_checkpoint_model(run)
    ids = fixed_batch(cfg.model.vocab_size, cfg.data.seq_len)
    with torch.no_grad(), ffn_granularity(nested, [s / 512 for s in sizes]):
        assert float((model(ids) - nested(ids)).abs().max()) <= 1e-6
    # Trains (fresh optimizer) and generates with no MatFormer section in its config.
    config = tmp_path / "mix" / "config.yaml"
    assert "matformer: null" in config.read_text()
    trained = tmp_path / "finetune"
    assert_ok(run_pretrain(trained, ["train.steps=3", "train.warmup_steps=0", "train.eval_interval=0",
                                     "data.num_workers=0", f"checkpoint.resume={tmp_path / 'mix'}"], config=config))
    records = read_metrics(trained)
    assert [r["step"] for r in records] == [1, 2, 3] and not any(k.startswith("loss_ffn") for k in records[0])
    proc = gigatron("generate", "--ckpt", str(trained), "--prompt", "ROMEO:", "--max-new-tokens", "8")
    assert_ok(proc)


def test_eval_and_speculative_generate_from_the_command_line(single_process, tmp_path):
    run = single_process["sum"]
    assert_ok(gigatron("matformer", "eval", str(run), "--out", str(tmp_path / "eval"), "--per-interval", "1"))
    rows = json.loads((tmp_path / "eval" / "eval.json").read_text())
    kinds = [r["kind"] for r in rows]
    assert kinds.count("uniform") == 4 and "mix'n'match" in kinds
    assert [r["params"] for r in rows] == sorted(r["params"] for r in rows)
    valid = read_metrics(run, "valid")[-1]  # the trainer's own evaluation of the same batches
    full = next(r for r in rows if r["kind"] == "uniform" and r["fractions"][0] == 1.0)
    assert full["loss"] == pytest.approx(valid["loss_ffn1"], rel=1e-5)
    assert (tmp_path / "eval" / "params_vs_loss.png").stat().st_size > 1000
    plain = gigatron("generate", "--ckpt", str(run), "--prompt", "KING:", "--temperature", "0",
                     "--max-new-tokens", "24")
    fast = gigatron("generate", "--ckpt", str(run), "--prompt", "KING:", "--temperature", "0",
                    "--max-new-tokens", "24", "--draft-granularity", "0.25", "--draft-tokens", "3")
    assert_ok(plain)
    assert_ok(fast)
    assert fast.stdout == plain.stdout
    assert "drafted tokens accepted" in fast.stderr
    # Sampling (the default temperature 0.8, top-k 50) drafts too, under the rejection rule.
    sampled = gigatron("generate", "--ckpt", str(run), "--prompt", "KING:", "--max-new-tokens", "24",
                       "--draft-granularity", "0.25", "--seed", "3")
    assert_ok(sampled)
    assert "drafted tokens accepted" in sampled.stderr
