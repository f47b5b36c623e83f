"""Checkpoints move between layouts: consolidation agrees with the single-process run, round trips
are bitwise, training resumed on another layout continues the loss curve, hostile files are refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint
from gigatron.checkpoint.convert import consolidate, reshard
from gigatron.checkpoint.files import write_manifest
from gigatron.checkpoint.native import MOMENTS
from gigatron.checkpoint.reader import open_checkpoint
from tests.conftest import (
    GIGATRON,
    REPO,
    BackgroundRun,
    assert_ok,
    finish_all,
    pretrain_command,
    read_metrics,
    run_pretrain,
    train_losses,
)

pytestmark = pytest.mark.distributed

STEPS = ["train.steps=10", "train.warmup_steps=2", "train.eval_interval=0", "checkpoint.interval=5",
         "checkpoint.keep_last=2", "data.num_workers=0"]
LAYOUTS = {
    "single": ([], 1),
    "tp2": (["parallel.tp=2"], 2),
    "pp2-dp2-zero1": (["parallel.pp=2", "parallel.zero_stage=1"], 4),
    "dp2-zero3": (["parallel.zero_stage=3"], 2),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_ready) -> dict[str, Path]:
    """10-step smoke runs of every layout, with checkpoints after steps 5 and 10."""
    root = tmp_path_factory.mktemp("layouts")
    # All at once, one thread per rank: 9 ranks of tiny models overlap their start-up and gloo waits.
    return finish_all({name: BackgroundRun(root / name, STEPS + layout, nproc=nproc, threads=1)
                       for name, (layout, nproc) in LAYOUTS.items()})


def step5(run: Path) -> Path:
    return run / "checkpoints" / "step_00000005"


def assert_bitwise(a, b) -> None:
    assert set(a.plans) == set(b.plans)
    assert a.optimizer_step == b.optimizer_step and a.trainer_state == b.trainer_state
    for name in a.plans:
        for key in (None, *MOMENTS):
            assert torch.equal(a.tensor(name, key), b.tensor(name, key)), (name, key)


@pytest.mark.parametrize("layout", ["tp2", "pp2-dp2-zero1", "dp2-zero3"])
def test_consolidated_state_matches_the_single_process_run(runs, layout, tmp_path):
    reference = consolidate(step5(runs["single"]), tmp_path / "single", log=lambda _: None)
    ours = ConsolidatedCheckpoint(consolidate(step5(runs[layout]), tmp_path / layout, log=lambda _: None))
    ref = ConsolidatedCheckpoint(reference)
    assert ours.optimizer_step == ref.optimizer_step == 5
    # Step, tokens, loader counters: layout-free. The recent losses (the spike test's window) are
    # losses, which other layouts round differently in the last bits.
    ours_state, ref_state = dict(ours.trainer_state), dict(ref.trainer_state)
    assert ours_state.pop("recent_losses") == pytest.approx(ref_state.pop("recent_losses"), rel=1e-5)
    assert ours_state == ref_state
    for name in ref.plans:
        for key in (None, *MOMENTS):
            a, b = ours.tensor(name, key), ref.tensor(name, key)
            # Different layouts sum in different orders: equal to float rounding, amplified a little by Adam.
            assert (a - b).abs().max() <= 2e-3 * b.abs().max() + 1e-12, (layout, name, key)
    source = open_checkpoint(step5(runs[layout]))
    if source.zero_stage < 3:
        # The weights the model held (DeepSpeed's module files) are a second, independent record of
        # the master weights assembled from optimizer partitions.
        for name in ref.plans:
            assert torch.equal(source.model_weight(name), ours.tensor(name)), name


@pytest.mark.parametrize(("layout", "target"), [
    ("tp2", dict(tp=1, pp=2, dp=2, zero=1)),
    ("dp2-zero3", dict(tp=2, pp=1, dp=2, zero=3)),
    ("pp2-dp2-zero1", dict(tp=2, pp=1, dp=2, zero=1)),
], ids=["tp2-to-pp2-dp2-zero1", "zero3-dp2-to-tp2-dp2-zero3", "pp2-zero1-to-tp2-dp2-zero1"])
def test_round_trip_through_another_layout_is_bitwise(runs, layout, target, tmp_path):
    first = consolidate(step5(runs[layout]), tmp_path / "first", log=lambda _: None)
    moved = reshard(first, tmp_path / "moved", **target, log=lambda _: None)
    back = consolidate(moved, tmp_path / "back", log=lambda _: None)
    moved_layout = open_checkpoint(moved).layout
    assert moved_layout["tp"] == target["tp"] and moved_layout["pp"] == target["pp"]
    assert moved_layout["zero_stage"] == target["zero"]
    assert_bitwise(ConsolidatedCheckpoint(first), ConsolidatedCheckpoint(back))


@pytest.mark.parametrize(("source", "layout"), [
    ("tp2", "pp2-dp2-zero1"),
    ("pp2-dp2-zero1", "tp2"),
    ("single", "dp2-zero3"),
], ids=["tp2-to-pp2-dp2", "pp2-dp2-to-tp2", "single-to-zero3"])
def test_training_resumed_on_another_layout_continues_the_loss_curve(runs, source, layout, tmp_path):
    overrides, nproc = LAYOUTS[layout]
    start = step5(runs[source])
    if layout == "dp2-zero3":  # also resume from a consolidated directory
        start = consolidate(start, tmp_path / "consolidated", log=lambda _: None)
    proc = run_pretrain(tmp_path / "resumed", [*STEPS, *overrides, f"checkpoint.resume={start}"], nproc=nproc)
    assert_ok(proc)
    assert "loading its logical state" in proc.stdout + proc.stderr
    resumed, original = train_losses(tmp_path / "resumed"), train_losses(runs[source])
    assert sorted(resumed) == [6, 7, 8, 9, 10]
    for step, loss in resumed.items():
        assert loss == pytest.approx(original[step], rel=1e-5), (step, loss, original[step])


def test_same_layout_resume_keeps_deepspeed_files_and_a_restart_prefers_the_runs_own_checkpoint(runs, tmp_path):
    out = tmp_path / "run"
    assert_ok(run_pretrain(out, [*STEPS, "train.exit_interval=2", f"checkpoint.resume={step5(runs['single'])}"]))
    # Restarted with the same seed checkpoint (a requeue), the run continues from its own step 7.
    proc = run_pretrain(out, [*STEPS, f"checkpoint.resume={step5(runs['single'])}"])
    assert_ok(proc)
    assert "holds this run's own checkpoint step_00000007" in proc.stdout
    assert [r["step"] for r in read_metrics(out)] == [6, 7, 8, 9, 10]
    for step, loss in train_losses(out).items():
        assert loss == pytest.approx(train_losses(runs["single"])[step], rel=1e-6)


class _Payload:
    """Unpickling this creates a file: the side effect a refused load must not have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_not_executed(runs, tmp_path):
    tag = tmp_path / "step_00000005"
    shutil.copytree(step5(runs["single"]), tag)
    marker = tmp_path / "pwned"
    torch.save({"module": {}, "evil": _Payload(marker)}, tag / "mp_rank_00_model_states.pt")
    write_manifest(tag)  # a forged manifest: past the manifest check, the safe loader still refuses it
    convert = subprocess.run([*GIGATRON, "convert", "consolidate", str(tag),
                              str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert convert.returncode == 2, convert.stderr
    assert "refused" in convert.stderr and "mp_rank_00_model_states.pt" in convert.stderr
    resume = subprocess.run([*pretrain_command(tmp_path / "run", STEPS), "--resume-from", str(tag)],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert resume.returncode == 2, resume.stderr[-3000:]
    assert "refused" in resume.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The payload is real: an unrestricted load would have run it.
    torch.load(tag / "mp_rank_00_model_states.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("layout", ["tp2", "dp2-zero3"])
def test_export_hf_from_a_sharded_run_is_verified_and_imports_back_bitwise(runs, layout, tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[dev])")
    from gigatron.checkpoint.hf_export import export
    from gigatron.checkpoint.hf_import import import_hf

    export(step5(runs[layout]), tmp_path / "hf")  # reloads with transformers, compares logits (1e-4)
    imported = ConsolidatedCheckpoint(import_hf(tmp_path / "hf", tmp_path / "back", log=lambda _: None))
    source = open_checkpoint(step5(runs[layout]))
    for name in source.plans:
        assert torch.equal(imported.tensor(name), source.tensor(name)), name


def test_bf16_checkpoints_keep_their_fp32_masters_through_conversion_and_resume(tmp_path, corpus_ready):
    """bf16 at ZeRO-0 (DeepSpeed's unfused wrapper) and ZeRO-1: fp32 masters, not the bf16 weights,
    are what moves; resuming from the consolidated state continues the run bitwise."""
    bf16 = ["train.steps=5", "train.warmup_steps=1", "train.eval_interval=0", "checkpoint.interval=3",
            "train.precision=bf16", "data.num_workers=0", "logging.interval=1"]
    assert_ok(run_pretrain(tmp_path / "zero0", bf16))
    assert_ok(run_pretrain(tmp_path / "zero1", [*bf16, "parallel.zero_stage=1"], nproc=2))
    for layout in ("zero0", "zero1"):
        source = open_checkpoint(tmp_path / layout / "checkpoints" / "step_00000003")
        master, model = source.tensor("1.attn.q.weight"), source.model_weight("1.attn.q.weight")
        assert master.dtype == torch.float32 and not torch.equal(master, model)
        assert torch.equal(master.to(torch.bfloat16).float(), model)  # the model holds bf16(master)
    consolidated = consolidate(tmp_path / "zero0" / "checkpoints" / "step_00000003", tmp_path / "c",
                               log=lambda _: None)
    proc = run_pretrain(tmp_path / "resumed", [*bf16, f"checkpoint.resume={consolidated}"])
    assert_ok(proc)
    resumed = train_losses(tmp_path / "resumed")
    assert sorted(resumed) == [4, 5]
    assert all(resumed[step] == train_losses(tmp_path / "zero0")[step] for step in resumed)
