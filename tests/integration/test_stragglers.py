"""A rank slowed by a sleep before each forward pass (GIGATRON_INJECT_SLEEP) is named as a straggler,
in the log and in a `stragglers` metrics record; with no rank slowed, none is."""

from __future__ import annotations

import subprocess

import pytest

from gigatron.pretrain.stragglers import INJECT_SLEEP_ENV
from tests.conftest import REPO, _run_env, assert_ok, pretrain_command, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.usefixtures("corpus_ready")]

OVERRIDES = ["train.steps=12", "train.warmup_steps=2", "train.eval_interval=0", "data.num_workers=0",
             "train.micro_batch_size=2", "checkpoint.interval=0", "checkpoint.save_final=false",
             "faults.straggler_interval=6", "faults.straggler_factor=2"]


def _run(run_dir, sleep: str | None) -> subprocess.CompletedProcess:
    env = {**_run_env(4), INJECT_SLEEP_ENV: sleep or ""}
    return subprocess.run(pretrain_command(run_dir, OVERRIDES, nproc=4), capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)


def test_a_rank_slowed_by_a_sleep_is_named(tmp_path):
    proc = _run(tmp_path, "2:0.25")
    assert_ok(proc)
    reports = read_metrics(tmp_path, kind="stragglers")
    assert [r["step"] for r in reports] == [6, 12]
    for report in reports:
        assert report["slow_ranks"] == [2], report
        own = [r["own_s"] for r in report["ranks"]]
        assert own[2] > 0.25 and own[2] > 2 * max(own[i] for i in (0, 1, 3))
    lines = [line for line in proc.stdout.splitlines() if "[straggler]" in line]
    assert len(lines) == 2 and "rank 2 (host" in lines[0], proc.stdout[-3000:]


def test_no_straggler_without_one(tmp_path):
    proc = _run(tmp_path, None)
    assert_ok(proc)
    assert [r["slow_ranks"] for r in read_metrics(tmp_path, kind="stragglers")] == [[], []]
    assert "[straggler]" not in proc.stdout
