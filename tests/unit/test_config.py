"""Config loading, overrides and the bad-config messages a user sees before any process starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gigatron.config import ConfigError, config_from_dict, config_to_dict, load_config, validate_config
from tests.conftest import REPO, SMOKE


def smoke(*overrides: str):
    return load_config(SMOKE, list(overrides))


def test_smoke_config_loads_with_typed_overrides() -> None:
    cfg = smoke("train.lr=2e-3", "parallel.tp=2", "train.betas=[0.9, 0.99]")
    assert cfg.train.lr == 2e-3 and isinstance(cfg.train.lr, float)
    assert cfg.parallel.tp == 2
    assert cfg.train.betas == (0.9, 0.99)
    assert type(cfg.model).family == "gpt"


def test_round_trip_through_plain_data() -> None:
    cfg = validate_config(smoke("train.steps=7"), world_size=1)
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(("override", "message"), [
    ("train.lrr=1", "unknown key 'train.lrr' (did you mean 'lr'?)"),
    ("trian.lr=1", "unknown key 'trian' (did you mean 'train'?)"),
    ("model.num_head=2", "unknown key 'model.num_head' (did you mean 'num_heads'?)"),
    ("model.family=gtp", "unknown family 'gtp' (did you mean 'gpt'?)"),
    ("train.schedule=linear", "train.schedule: 'linear' is not one of 'cosine', 'wsd', 'constant'"),
    ("train.micro_batch_size=two", "train.micro_batch_size: expected an integer, got 'two'"),
])
def test_load_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        smoke(override)
    assert message in str(info.value)
    assert str(SMOKE) in str(info.value)


@pytest.mark.parametrize(("overrides", "world_size", "message"), [
    (["parallel.tp=2", "parallel.pp=2"], 6,
     "world size 6 is not divisible by parallel.tp*parallel.pp*parallel.cp = 2*2*1 = 4"),
    (["parallel.tp=3"], 3, "model.num_heads=4 is not divisible by parallel.tp=3"),
    (["parallel.pp=3"], 3, "model.num_layers=4 is not divisible by parallel.pp=3"),
    (["train.global_batch_size=6"], 2,
     "train.global_batch_size=6 is not divisible by train.micro_batch_size*dp = 4*2 = 8"),
    (["parallel.dp=4"], 2, "parallel.dp=4 but world size 2"),
    (["parallel.pp=2", "parallel.zero_stage=2"], 2, "supports ZeRO stage 0 or 1 only"),
    (["train.tokens=1000"], 1, "set exactly one of train.steps and train.tokens"),
    (["model.num_kv_heads=3"], 1, "model.num_heads=4 is not divisible by model.num_kv_heads=3"),
])
def test_impossible_layouts_are_rejected(overrides, world_size, message) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(smoke(*overrides), world_size)
    assert message in str(info.value)


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(smoke("parallel.tp=3", "train.global_batch_size=6"), 3)
    assert "model.num_heads=4" in str(info.value) and "train.global_batch_size=6" in str(info.value)


def test_dp_is_derived() -> None:
    cfg = validate_config(smoke("parallel.tp=2", "train.global_batch_size=16"), world_size=8)
    assert cfg.parallel.dp == 4


def test_cli_reports_bad_config_before_starting(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gigatron", "pretrain", "--config", str(SMOKE), "--set", "parallel.tp=2",
         "--set", f"output_dir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    assert "world size 1 is not divisible by parallel.tp*parallel.pp*parallel.cp" in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
