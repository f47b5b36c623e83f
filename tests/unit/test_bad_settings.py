"""Settings out of range are errors that name the key (or flag) and the valid range, all at once,
before anything starts: optimizer keys, tiny sequence lengths, hang limits, fault handling,
scaling predict's numbers; an interrupted or killed dataset build leaves nothing behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gigatron.config import ConfigError, load_config, validate_config
from gigatron.data.default_dataset import build_dataset_once
from tests.conftest import GIGATRON, REPO, SMOKE


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1e-3", "train.lr=-0.001 must be > 0"),
    ("train.lr=nan", "train.lr=nan must be > 0"),
    ("train.min_lr=-1e-5", "train.min_lr=-1e-05 must be >= 0"),
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1 must be >= 0"),
    ("train.betas=[0.9,1.0]", "train.betas=[0.9, 1.0] must be two numbers in [0, 1)"),
    ("train.betas=[-0.1,0.95]", "train.betas=[-0.1, 0.95] must be two numbers in [0, 1)"),
    ("train.eps=0", "train.eps=0"),
    ("train.clip_grad=-1", "train.clip_grad=-1"),
    ("data.seq_len=1", "data.seq_len=1 must be >= 16"),
    ("train.hang_timeout=5", "train.hang_timeout=5 must be >= 10 seconds"),
    ("train.hang_timeout=-1", "train.hang_timeout=-1 must be >= 10 seconds"),
    ("train.hang_allowance=0", "train.hang_allowance=0 must be >= 10 seconds"),
    ("faults.spike_factor=0.5", "faults.spike_factor=0.5 must be > 1"),
    ("faults.spike_window=1", "faults.spike_window=1 must be >= 2"),
    ("faults.max_rollbacks=-1", "faults.max_rollbacks=-1 must be >= 0"),
    ("faults.straggler_interval=-1", "faults.straggler_interval=-1 must be >= 0"),
    ("faults.straggler_factor=1", "faults.straggler_factor=1.0 must be > 1"),
])
def test_out_of_range_settings_name_the_key_and_range(override, message):
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        validate_config(load_config(SMOKE, ["train.steps=100", override]), 1)
    assert message in str(info.value)


def test_a_warmup_longer_than_the_steps_is_refused_and_one_as_long_is_not():
    with pytest.raises(ConfigError) as info:
        validate_config(load_config(SMOKE, ["train.steps=10", "train.warmup_steps=11", "train.lr=-1"]), 1)
    assert "train.warmup_steps=11 is longer than the run (10 steps: train.steps=10)" in str(info.value)
    assert "train.lr=-1" in str(info.value)  # reported with the others
    validate_config(load_config(SMOKE, ["train.steps=10", "train.warmup_steps=10"]), 1)


def test_a_warmup_longer_than_a_token_budget_is_refused_before_training(tmp_path):
    # smoke: 8 samples of 128 tokens per step, so 5,000 tokens are 5 steps.
    proc = subprocess.run([*GIGATRON, "pretrain", "--config", str(SMOKE), "--set", "train.steps=null",
                           "--set", "train.tokens=5000", "--set", "train.warmup_steps=6",
                           "--set", f"output_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "train.warmup_steps=6 is longer than the run (5 steps: train.tokens=5,000 at 1,024 tokens per step)" \
        in proc.stderr
    assert not (tmp_path / "run").exists()


def test_all_optimizer_problems_are_reported_together():
    with pytest.raises(ConfigError) as info:
        validate_config(load_config(SMOKE, ["train.steps=100", "train.lr=-1", "train.eps=0",
                                            "train.weight_decay=-1"]), 1)
    assert all(key in str(info.value) for key in ("train.lr=", "train.eps=", "train.weight_decay="))


def test_a_killed_builds_staging_is_removed_and_an_interrupted_one_cleans_up(tmp_path):
    target = tmp_path / "dataset"
    stale = tmp_path / ".dataset.tmp-killed"  # what a SIGKILLed build leaves
    (stale / "dataset").mkdir(parents=True)
    (stale / "dataset" / "shard.bin").write_bytes(b"x" * 1000)

    def interrupted(out: Path) -> None:
        out.mkdir()
        (out / "part").write_bytes(b"y" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset_once(target, interrupted)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".dataset.lock") == []

    def complete(out: Path) -> None:
        out.mkdir()
        (out / "manifest.json").write_text("{}")

    assert build_dataset_once(target, complete) == target and (target / "manifest.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--compute", "0"], "argument --compute: 0 must be > 0"),
    (["--compute", "-1"], "argument --compute: -1 must be > 0"),
    (["--compute", "nan"], "argument --compute: 'nan' is not a finite number"),
    (["--params", "0", "--tokens", "1e9"], "argument --params: 0 must be > 0"),
])
def test_scaling_predict_refuses_numbers_out_of_range(args, message, tmp_path):
    proc = subprocess.run([*GIGATRON, "scaling", "predict", "--fit", str(tmp_path / "fit.json"), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", [["scaling", "--help"], ["scaling", "fit", "--help"],
                                     ["scaling", "predict", "--help"]])
def test_scaling_help_prints(command):
    proc = subprocess.run([*GIGATRON, *command], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
