"""Numerical faults under each `faults.policy`, with NaN and loss spikes injected into real runs
(GIGATRON_INJECT_LOSS): a bad step is never applied; skip goes on and counts it; rollback reloads
the latest checkpoint and skips exactly the recorded samples (a later resume skips them too); stop
exits 3 with diagnostics and is not requeued; no checkpoint holds NaN or infinity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from gigatron.checkpoint.files import list_tags, read_latest
from gigatron.launcher.exit_codes import EXIT_NUMERICAL_FAULT
from gigatron.pretrain.numerics import INJECT_ENV
from gigatron.pretrain.watchdog import FAULTS_DIR, ROLLBACKS
from tests.conftest import REPO, _run_env, assert_ok, final_weights, pretrain_command, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("corpus_ready")]

BASE = ["train.steps=12", "train.warmup_steps=2", "train.eval_interval=0", "data.num_workers=0",
        "checkpoint.interval=4", "checkpoint.keep_last=10"]


def _run(run_dir: Path, overrides: list[str], inject: str | None = None, nproc: int = 1
         ) -> subprocess.CompletedProcess:
    env = _run_env(nproc)
    env.pop(INJECT_ENV, None)
    if inject:
        env[INJECT_ENV] = inject
    return subprocess.run(pretrain_command(run_dir, [*BASE, *overrides], nproc), capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)


def _floating_tensors(value) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _floating_tensors(v)]
    return []


def _assert_checkpoints_finite(run_dir: Path) -> None:
    ckpt = run_dir / "checkpoints"
    for tag in list_tags(ckpt):
        for path in (ckpt / tag).glob("*.pt"):
            tensors = _floating_tensors(torch.load(path, weights_only=False, map_location="cpu"))
            assert all(bool(t.isfinite().all()) for t in tensors), f"{path} holds NaN or infinity"


@pytest.mark.parametrize("layout, nproc", [(["parallel.zero_stage=1"], 2), (["parallel.tp=2"], 2)],
                         ids=["zero1-dp2", "tp2"])
def test_skip_drops_the_bad_steps_counts_them_and_keeps_every_checkpoint_finite(tmp_path, layout, nproc):
    # Step 5's loss is NaN, step 7's 100x its value: a spike against the median of the last 3 steps.
    proc = _run(tmp_path, [*layout, "faults.policy=skip", "faults.spike_factor=3", "faults.spike_window=3"],
                inject="5:nan,7:100", nproc=nproc)
    assert_ok(proc)
    records = {r["step"]: r for r in read_metrics(tmp_path)}
    assert [s for s, r in records.items() if r["rejected"]] == [5, 7]
    assert records[12]["rejected_steps"] == 2
    # A step not applied does not advance the LR schedule (as in Megatron-LM).
    assert records[6]["lr"] == records[5]["lr"] and records[8]["lr"] == records[7]["lr"]
    assert "step 5: non-finite gradient" in proc.stdout and "step 7: loss spike" in proc.stdout
    _assert_checkpoints_finite(tmp_path)


@pytest.mark.usefixtures("one_thread_per_run")
def test_rollback_reloads_the_latest_checkpoint_and_skips_exactly_the_recorded_samples(tmp_path):
    rolled = tmp_path / "rolled"
    proc = _run(rolled, ["faults.policy=rollback"], inject="6:nan")
    assert_ok(proc)
    [record] = [json.loads(line) for line in (rolled / FAULTS_DIR / ROLLBACKS).read_text().splitlines()]
    # Global batch 8: the checkpoint at step 4 had read 32 samples, the bad step 6 ended at 48.
    assert record == {"step": 6, "reason": "non-finite gradient", "detail": "a gradient holds NaN or infinity",
                      "restored": "step_00000004", "restored_step": 4, "skipped_samples": [32, 48]}
    assert "reloaded step_00000004 (step 4) and skipped samples 32..47" in proc.stdout
    assert read_latest(rolled / "checkpoints") == "step_00000012"
    _assert_checkpoints_finite(rolled)

    # The same run without the NaN, stopped at step 4 and resumed with the rollback's record, skips
    # the same samples on resume and ends with bitwise the same weights: exactly those were skipped.
    replay = tmp_path / "replay"
    assert_ok(_run(replay, ["train.exit_interval=4"]))
    (replay / FAULTS_DIR).mkdir()
    shutil.copy(rolled / FAULTS_DIR / ROLLBACKS, replay / FAULTS_DIR / ROLLBACKS)
    resumed = _run(replay, [])
    assert_ok(resumed)
    assert "skipping samples 32..47, as a rollback did" in resumed.stdout
    expected, got = final_weights(rolled), final_weights(replay)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_stop_exits_3_with_diagnostics_and_saves_nothing_after_the_fault(tmp_path):
    proc = _run(tmp_path, ["faults.policy=stop"], inject="6:nan")
    assert proc.returncode == EXIT_NUMERICAL_FAULT, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads((tmp_path / FAULTS_DIR / "numerical-step_00000006.json").read_text())
    assert report["reason"] == "non-finite gradient" and report["samples"] == [40, 48]
    assert list_tags(tmp_path / "checkpoints") == ["step_00000004"]
    _assert_checkpoints_finite(tmp_path)


def test_rollback_without_a_checkpoint_stops(tmp_path):
    proc = _run(tmp_path, ["faults.policy=rollback"], inject="2:nan")
    assert proc.returncode == EXIT_NUMERICAL_FAULT, proc.stderr[-3000:]
    assert "cannot roll back: no checkpoint to roll back to" in proc.stdout


def test_the_batch_script_does_not_requeue_a_numerical_stop(tmp_path):
    # slurm/common.sh's decision, with a scontrol that records being called.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/scontrol.calls\n")
    (bin_dir / "scontrol").chmod(0o755)
    script = f"source {REPO}/slurm/common.sh; gigatron_finish {EXIT_NUMERICAL_FAULT}"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42"}
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == EXIT_NUMERICAL_FAULT and "not requeueing" in proc.stdout
    assert not (tmp_path / "scontrol.calls").exists()
    killed = subprocess.run(["bash", "-c", f"source {REPO}/slurm/common.sh; gigatron_finish 137"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert killed.returncode == 0 and "a rank died of SIGKILL" in killed.stdout
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "42"]
