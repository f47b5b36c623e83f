"""Loading trained checkpoints on one process: single file, pipeline files, incomplete or hostile files, CLI generate."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from gigatron.checkpoint.files import write_manifest
from gigatron.checkpoint.reader import load_checkpoint_model, resolve_checkpoint
from tests.conftest import GIGATRON, REPO, assert_ok, final_weights, run_pretrain

TWO_STEPS = ["train.steps=2", "train.eval_interval=0", "data.num_workers=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_ready) -> Path:
    """A gpt smoke run of 2 steps (one process)."""
    out = tmp_path_factory.mktemp("gpt")
    assert_ok(run_pretrain(out, TWO_STEPS))
    return out


def tag_of(run: Path) -> Path:
    return run / "checkpoints" / "step_00000002"


def test_every_way_of_naming_the_checkpoint_resolves_to_the_tag(trained):
    tag = tag_of(trained)
    assert resolve_checkpoint(trained) == resolve_checkpoint(trained / "checkpoints") == resolve_checkpoint(tag) == tag
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(trained / "nope")
    with pytest.raises(FileNotFoundError, match="not a gigatron checkpoint"):
        resolve_checkpoint(tag / "rng")


def test_latest_naming_a_missing_tag_is_reported(trained, tmp_path):
    (tmp_path / "latest").write_text("step_00000009\n")
    with pytest.raises(FileNotFoundError, match="names step_00000009"):
        resolve_checkpoint(tmp_path)


def test_checkpoint_loads_with_the_trained_weights(trained):
    cfg, model = load_checkpoint_model(trained)
    assert type(cfg.model).family == "gpt" and not model.training
    expected = final_weights(trained)
    assert set(model.state_dict()) == set(expected)
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name].float()), name


def test_pipeline_checkpoint_loads_to_the_weights_of_its_layer_files(tmp_path, corpus_ready):
    assert_ok(run_pretrain(tmp_path, [*TWO_STEPS, "parallel.pp=2"], nproc=2))
    tag = tag_of(tmp_path)
    files = sorted(tag.glob("layer_*-model_00-model_states.pt"))
    assert len(files) == 6  # embedding, 4 blocks, head
    _, model = load_checkpoint_model(tmp_path)
    state = model.state_dict()
    for file in files:
        layer = int(file.name.split("-")[0].removeprefix("layer_"))
        for key, value in torch.load(file, weights_only=True).items():
            assert torch.equal(state[f"{layer}.{key}"], value.float()), (file.name, key)
    assert len(state) == sum(len(torch.load(f, weights_only=True)) for f in files)


def copy_tag(trained: Path, tmp_path: Path, old: str = "", new: str = "") -> Path:
    """A copy of the checkpoint with its config edited and its manifest rewritten to match: a
    checkpoint consistent with its manifest, so that the checks after the manifest's are reached."""
    tag = tmp_path / "step_00000002"
    shutil.copytree(tag_of(trained), tag)
    config = tag / "config.yaml"
    config.write_text(config.read_text().replace(old, new))
    write_manifest(tag)
    return tag


def test_files_missing_for_the_recorded_layout_are_named(trained, tmp_path):
    tag = copy_tag(trained, tmp_path, "  tp: 1\n", "  tp: 2\n")
    with pytest.raises(ValueError, match=r"incomplete for parallel.tp=2.*missing mp_rank_01_model_states.pt"):
        load_checkpoint_model(tag)


def test_weights_of_another_shape_list_the_mismatching_keys(trained, tmp_path):
    tag = copy_tag(trained, tmp_path, "  num_layers: 4\n", "  num_layers: 5\n")
    with pytest.raises(ValueError, match=r"missing: 5\.attn\.k\.weight.*unexpected: 5\.norm\.weight"):
        load_checkpoint_model(tag)


def test_files_that_would_run_code_are_refused(trained, tmp_path):
    tag = copy_tag(trained, tmp_path)
    # Any pickled callable is refused by weights_only; loading it unrestricted would call it.
    torch.save({"module": {}, "hook": print}, tag / "mp_rank_00_model_states.pt")
    write_manifest(tag)  # a forged manifest: the file is still read only safely
    with pytest.raises(ValueError, match=r"mp_rank_00_model_states.pt: refused, it can only be read by unpickling"):
        load_checkpoint_model(tag)


def test_generate_command_end_to_end(trained):
    def generate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*GIGATRON, "generate", *args], capture_output=True, text=True,
                              timeout=120, cwd=REPO)

    ok = generate("--ckpt", str(trained), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "1")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.startswith("ROMEO:") and "tokens/s" in ok.stderr
    assert generate("--ckpt", str(trained), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "1").stdout \
        == ok.stdout
    missing = generate("--ckpt", str(trained / "nope"), "--prompt", "x")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    wrong = generate("--ckpt", str(trained), "--prompt", "x", "--tokenizer", "bytes")
    assert wrong.returncode == 2 and "was trained with sp-" in wrong.stderr
