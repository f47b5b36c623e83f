"""Config loading, overrides and the bad-config messages a user sees before any process starts."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from gigatron.config import ConfigError, config_from_dict, config_to_dict, load_config, validate_config
from tests.conftest import GIGATRON, REPO, SMOKE


def smoke(*overrides: str):
    return load_config(SMOKE, list(overrides))


def test_smoke_config_loads_with_typed_overrides() -> None:
    cfg = smoke("train.lr=2e-3", "parallel.tp=2", "train.betas=[0.9, 0.99]")
    assert cfg.train.lr == 2e-3 and isinstance(cfg.train.lr, float)
    assert cfg.parallel.tp == 2
    assert cfg.train.betas == (0.9, 0.99)
    assert type(cfg.model).family == "gpt"


def test_round_trip_through_plain_data() -> None:
    cfg = validate_config(smoke("train.steps=7", "train.warmup_steps=7"), world_size=1)
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
        [*GIGATRON, "pretrain", "--config", str(SMOKE), "--set", "parallel.tp=2",
         "--set", f"output_dir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    assert "world size 1 is not divisible by parallel.tp*parallel.pp*parallel.cp" in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_files_are_merged_under_the_file(tmp_path) -> None:
    _write(tmp_path / "family" / "base.yaml", "model: {family: gpt, hidden_size: 64, num_layers: 4, num_heads: 4}\n"
           "train: {steps: 10, lr: 1.0e-3, betas: [0.9, 0.95]}\noutput_dir: runs/base\n")
    _write(tmp_path / "family" / "sizes" / "wide.yaml", "base: ../base.yaml\nmodel: {hidden_size: 128}\n"
           "train: {betas: [0.8, 0.9]}\noutput_dir: runs/wide\n")
    cfg = load_config(tmp_path / "family" / "sizes" / "wide.yaml", ["train.steps=3"])
    # Mappings merge key by key; a list or scalar in the file replaces the base's; --set comes last.
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads) == (128, 4, 4)
    assert (cfg.train.lr, cfg.train.betas, cfg.train.steps) == (1.0e-3, (0.8, 0.9), 3)
    assert cfg.output_dir == "runs/wide"


def test_several_bases_apply_in_order_and_chain(tmp_path) -> None:
    _write(tmp_path / "a.yaml", "model: {family: gpt, hidden_size: 64, num_layers: 2}\ntrain: {steps: 1, lr: 0.1}\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\ntrain: {lr: 0.2, min_lr: 0.01}\n")
    _write(tmp_path / "c.yaml", "train: {lr: 0.3}\n")
    cfg = load_config(_write(tmp_path / "run.yaml", "base: [b.yaml, c.yaml]\nmodel: {num_layers: 6}\n"))
    assert (cfg.model.hidden_size, cfg.model.num_layers) == (64, 6)
    assert (cfg.train.lr, cfg.train.min_lr, cfg.train.steps) == (0.3, 0.01, 1)


@pytest.mark.parametrize(("files", "message"), [
    ({"run.yaml": "base: missing.yaml\n"}, "missing.yaml' does not exist (base of"),
    ({"run.yaml": "base: a.yaml\n", "a.yaml": "base: run.yaml\n"}, "`base` files form a cycle"),
    ({"run.yaml": "base: 3\n"}, "must be a path"),
    ({"run.yaml": "base: a.yaml\n", "a.yaml": "- not a mapping\n"}, "a.yaml: top level must be a mapping"),
])
def test_bad_bases_are_named(tmp_path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(tmp_path / "run.yaml")
    assert message in str(info.value)


def test_base_cannot_be_set_on_the_command_line() -> None:
    with pytest.raises(ConfigError, match="--set base=...: `base` is read from YAML files only"):
        smoke("base=other.yaml")


def test_shipped_sizes_state_only_what_differs_from_their_base() -> None:
    # Every size of the text-to-image study and of TokenFormer takes its recipe from one base file,
    # so a change to the recipe (say the learning rate) is made once.
    # The incremental-scaling pair (grow-*) reads OpenWebText2 at 1,024 tokens, as the authors' did,
    # so it states its data; the 757M run takes the 354M run's.
    for pattern in ("t2i/depth/*.yaml", "t2i/width/*.yaml", "tokenformer/[0-9]*.yaml", "tokenformer/grow-*.yaml"):
        paths = sorted((REPO / "configs").glob(pattern))
        assert paths, pattern
        for path in paths:
            raw = yaml.safe_load(path.read_text())
            assert raw["base"] in ("../base.yaml", "base.yaml", "grow-354m.yaml"), path
            assert "lr" not in raw.get("train", {}), path
            assert "data" not in raw or path.name == "grow-354m.yaml", path
            assert validate_config(load_config(path), world_size=16).train.lr > 0


@pytest.mark.parametrize(("override", "old", "new"), [
    ("train.grow_from=runs/x", "train.grow_from", "grow.checkpoint"),
    ("train.grow_init=random", "train.grow_init", "grow.init"),
    ("train.grow_optimizer=reset", "train.grow_optimizer", "grow.optimizer"),
    ("train.matformer_mode=sample", "train.matformer_mode", "matformer.mode"),
    ("train.matformer_weights=[1,2]", "train.matformer_weights", "matformer.weights"),
    ("train.matformer_probabilities=[1]", "train.matformer_probabilities", "matformer.probabilities"),
    ("train.flow.shift=3", "train.flow", "diffusion"),
    ("data.image_size=64", "data.image_size", "images.image_size"),
    ("data.classes=[a,b]", "data.classes", "images.classes"),
    ("data.latents=true", "data.latents", "images.latents"),
])
def test_a_moved_key_names_its_new_section(override: str, old: str, new: str) -> None:
    with pytest.raises(ConfigError, match=f"{old} has moved to {new}"):
        smoke(override)


def test_checkpoints_written_before_the_move_still_load(tmp_path) -> None:
    old = config_to_dict(smoke("train.steps=3"))
    old["train"].update(grow_from="runs/small", grow_init="random", flow={"shift": 3.0})
    old["data"].update(image_size=64, valid_images=8)
    old.pop("grow"), old.pop("diffusion"), old.pop("images")
    path = _write(tmp_path / "config.yaml", yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="train.grow_from has moved to grow.checkpoint"):
        load_config(path)
    cfg = load_config(path, migrate=True)
    assert (cfg.grow.checkpoint, cfg.grow.init, cfg.diffusion.shift) == ("runs/small", "random", 3.0)
    assert (cfg.images.image_size, cfg.images.valid_images, cfg.images.caption_len) == (64, 8, 32)
    assert cfg.diffusion.condition_dropout == 0.1  # defaults fill what the old section did not say
