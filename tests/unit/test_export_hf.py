"""Exported models load in transformers and give our logits (fp32, within 1e-4)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch

from gigatron.checkpoint.files import write_manifest
from gigatron.config import config_from_dict, config_to_yaml
from gigatron.models.gpt.config import GPTConfig
from gigatron.models.hybrid.config import HybridConfig, Mamba2Config, MambaConfig
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.registry import build_model
from tests.conftest import GIGATRON, REPO

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[dev])")


def hybrid(**kw):
    base = dict(vocab_size=97, hidden_size=64, num_layers=6, pattern="M-M*M-", d_state=16, headdim=16, ngroups=2,
                chunk_size=8, num_heads=4, num_kv_heads=2, ffn_hidden_size=128)
    return HybridConfig(**{**base, **kw})


@pytest.mark.parametrize(("cfg", "cls"), [
    (hybrid(), "NemotronHForCausalLM"),
    (hybrid(tie_embeddings=True), "NemotronHForCausalLM"),
    (Mamba2Config(vocab_size=97, hidden_size=64, num_layers=3, d_state=16, headdim=16, ngroups=2, chunk_size=8),
     "Mamba2ForCausalLM"),
    (GPTConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, rope_base=5e5, norm_eps=1e-6),
     "LlamaForCausalLM"),
    (GPTConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, ffn_hidden_sizes=[96, 96]),
     "LlamaForCausalLM"),
], ids=["nemotron-h", "nemotron-h-tied", "mamba2", "llama", "llama-uniform-extracted"])
def test_exported_model_reproduces_our_logits(cfg, cls, tmp_path):
    from gigatron.checkpoint.hf_export import to_hf_model

    model = build_model(cfg, LayerFactory())
    initialize_parameters(model, seed=5)
    model.eval()
    to_hf_model(cfg, model).save_pretrained(tmp_path, safe_serialization=True)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(loaded).__name__ == cls
    ids = torch.randint(0, 97, (2, 21))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("cfg", "key"), [
    (hybrid(position_embedding="rope"), "model.position_embedding=rope"),
    (hybrid(mlp_activation="swiglu"), "model.mlp_activation=swiglu"),
    (MambaConfig(vocab_size=97, hidden_size=64, num_layers=2), "model.family=mamba cannot be exported"),
    (hybrid(ffn_hidden_sizes=[64, 128]), r"model.ffn_hidden_sizes=\[64, 128\]: transformers' config has a single"),
])
def test_unsupported_shapes_are_named(cfg, key):
    from gigatron.checkpoint.hf_export import ExportError, hf_config_and_tensors

    with pytest.raises(ExportError, match=key):
        hf_config_and_tensors(cfg, build_model(cfg, LayerFactory()))


def write_checkpoint(run: Path, model_cfg: HybridConfig, seed: int) -> torch.nn.Sequential:
    """A checkpoint in the layout DeepSpeed and gigatron write (pp=1), without a training run."""
    tag = run / "checkpoints" / "step_00000001"
    tag.mkdir(parents=True)
    model = build_model(model_cfg, LayerFactory())
    initialize_parameters(model, seed=seed)
    raw = {"model": {"family": "hybrid", **dataclasses.asdict(model_cfg)}, "data": {"cache_dir": str(run / "none")}}
    (tag / "config.yaml").write_text(config_to_yaml(config_from_dict(raw)))
    (tag / "trainer_state.json").write_text(json.dumps({"step": 1, "tokens": 0, "tokenizer_fingerprint": ""}))
    torch.save({"module": model.state_dict(), "global_steps": 1}, tag / "mp_rank_00_model_states.pt")
    write_manifest(tag)
    (run / "checkpoints" / "latest").write_text("step_00000001\n")
    return model.eval()


def test_export_command_writes_a_loadable_directory(tmp_path):
    model = write_checkpoint(tmp_path / "run", hybrid(), seed=7)
    out = tmp_path / "hf"
    command = [*GIGATRON, "export-hf", "--ckpt", str(tmp_path / "run"), "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids), rtol=1e-4, atol=1e-4)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert again.returncode == 2 and "not an empty directory" in again.stderr


@pytest.mark.parametrize("cfg", [
    hybrid(tie_embeddings=True),
    Mamba2Config(vocab_size=97, hidden_size=64, num_layers=2, d_state=16, headdim=16, ngroups=2, chunk_size=8),
    GPTConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, rope_base=5e5,
              ffn_hidden_size=160),
], ids=["nemotron-h", "mamba2", "llama"])
def test_import_hf_round_trips_an_export_bitwise(cfg, tmp_path):
    from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint
    from gigatron.checkpoint.hf_export import to_hf_model
    from gigatron.checkpoint.hf_import import import_hf
    from gigatron.checkpoint.reader import load_checkpoint_model

    model = build_model(cfg, LayerFactory())
    initialize_parameters(model, seed=11)
    to_hf_model(cfg, model.eval()).save_pretrained(tmp_path / "hf", safe_serialization=True)
    import_hf(tmp_path / "hf", tmp_path / "ours", log=lambda _: None)
    imported = ConsolidatedCheckpoint(tmp_path / "ours")
    assert not imported.has_optimizer and imported.trainer_state["step"] == 0
    loaded_cfg, loaded = load_checkpoint_model(tmp_path / "ours")
    # Exports are written untied (the head a copy of the embedding), so they come back untied.
    assert loaded_cfg.model == dataclasses.replace(cfg, tie_embeddings=False)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_import_hf_refuses_pickled_weights_and_unrepresentable_configs(tmp_path):
    from gigatron.checkpoint.hf_export import to_hf_model
    from gigatron.checkpoint.hf_import import UnsupportedModelError, import_hf

    cfg = GPTConfig(vocab_size=97, hidden_size=64, num_layers=1, num_heads=4)
    hf_model = to_hf_model(cfg, build_model(cfg, LayerFactory()))
    hf_model.config.save_pretrained(tmp_path / "bin")
    torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model.bin: pickled weights are never loaded"):
        import_hf(tmp_path / "bin", tmp_path / "out1")
    hf_model.config.attention_bias = True
    hf_model.save_pretrained(tmp_path / "bias")
    with pytest.raises(UnsupportedModelError, match="attention_bias=True cannot be represented"):
        import_hf(tmp_path / "bias", tmp_path / "out2")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_a_tied_checkpoint_consolidates_and_loads_with_one_embedding(tmp_path):
    from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint
    from gigatron.checkpoint.convert import consolidate
    from gigatron.checkpoint.reader import load_checkpoint_model

    model = write_checkpoint(tmp_path / "run", hybrid(tie_embeddings=True), seed=3)
    out = ConsolidatedCheckpoint(consolidate(tmp_path / "run", tmp_path / "c", log=lambda _: None))
    assert "0.tokens.weight" in out.stored_names() and "7.output.weight" not in out.stored_names()
    _, loaded = load_checkpoint_model(tmp_path / "c")
    assert loaded[-1].output.weight is loaded[0].tokens.weight
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
