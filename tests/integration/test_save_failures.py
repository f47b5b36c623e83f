"""A checkpoint save that cannot be written (a really full tmpfs, a read-only remount, a file-size
limit) ends the run with one message naming the path, the bytes needed and free, exit 74, the
partial directory removed and `latest` and the earlier checkpoints intact; with 2 ranks as well."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
from pathlib import Path

import pytest

from gigatron.checkpoint.files import list_tags, read_latest, verify_manifest
from gigatron.launcher.exit_codes import EXIT_SAVE_FAILED
from tests.conftest import REPO, _run_env, assert_ok, pretrain_command, run_pretrain

STEPS = ["train.eval_interval=0", "data.num_workers=0", "checkpoint.interval=2"]
MIB = 2**20


@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int):
    """A real tmpfs of `size_mib` MiB at `path` (needs root: mount)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount): {proc.stderr.strip()[:200]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _assert_clean_failure(proc: subprocess.CompletedProcess, ckpt_dir: Path, latest: str | None) -> None:
    if proc.returncode != EXIT_SAVE_FAILED:
        pytest.fail(f"exit {proc.returncode}, expected {EXIT_SAVE_FAILED}:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}")
    assert "could not save checkpoint" in proc.stderr and "free on" in proc.stderr and "needed" in proc.stderr
    assert "Traceback" not in proc.stderr and "inline_container" not in proc.stderr, proc.stderr[-3000:]
    assert read_latest(ckpt_dir) == latest
    tags = list_tags(ckpt_dir)
    assert tags == ([] if latest is None else [latest]), f"partial directories left: {tags}"
    for tag in tags:
        assert verify_manifest(ckpt_dir / tag) is None, "the earlier checkpoint must stay intact"


def test_a_disk_too_small_for_one_checkpoint(tmp_path, corpus_ready):
    with tmpfs(tmp_path / "disk", 8) as disk:  # a gpt smoke checkpoint is ~17 MiB
        proc = run_pretrain(tmp_path / "run", [*STEPS, "train.steps=2", f"checkpoint.dir={disk / 'ckpt'}"])
        _assert_clean_failure(proc, disk / "ckpt", None)
        assert "No space left on device (ENOSPC)" in proc.stderr or "the file system is full" in proc.stderr


def test_a_full_disk_keeps_the_previous_checkpoint_and_two_ranks_stop_together(tmp_path, corpus_ready):
    with tmpfs(tmp_path / "disk", 30) as disk:  # room for one checkpoint, not two
        ckpt = disk / "ckpt"
        command = pretrain_command(tmp_path / "run", [*STEPS, "train.steps=4", f"checkpoint.dir={ckpt}",
                                                      "parallel.zero_stage=1"], nproc=2)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_run_env(2), cwd=REPO)
        _assert_clean_failure(proc, ckpt, "step_00000002")
        assert "the previous checkpoint took" in proc.stderr


def test_a_read_only_file_system(tmp_path, corpus_ready):
    with tmpfs(tmp_path / "disk", 64) as disk:
        ckpt = disk / "ckpt"
        assert_ok(run_pretrain(tmp_path / "run", [*STEPS, "train.steps=2", f"checkpoint.dir={ckpt}"]))
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        proc = run_pretrain(tmp_path / "run", [*STEPS, "train.steps=4", f"checkpoint.dir={ckpt}"])
        _assert_clean_failure(proc, ckpt, "step_00000002")
        assert "Read-only file system (EROFS)" in proc.stderr


def test_a_file_size_limit(tmp_path, corpus_ready):
    run = tmp_path / "run"
    assert_ok(run_pretrain(run, [*STEPS, "train.steps=2"]))

    def limit() -> None:  # in the trainer process only
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 * MIB, resource.RLIM_INFINITY))

    # A fresh interpreter: the limit must apply to the trainer itself, not to a zygote's fork.
    command = pretrain_command(run, [*STEPS, "train.steps=4"], fresh=True)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, preexec_fn=limit,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    _assert_clean_failure(proc, run / "checkpoints", "step_00000002")
    assert "File too large (EFBIG)" in proc.stderr or "a file-size limit was reached" in proc.stderr
