"""Sampling with caches, checkpoint loading, and the generate command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gigatron.models.generation import generate
from gigatron.models.gpt import GPTConfig
from gigatron.models.hybrid import HybridConfig
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.registry import build_model
from gigatron.tools.checkpoint_io import load_checkpoint_model, resolve_checkpoint
from tests.conftest import REPO, assert_ok, final_weights, run_pretrain

HYBRID = REPO / "configs" / "hybrid" / "smoke.yaml"


@pytest.mark.parametrize("cfg", [
    GPTConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4),
    HybridConfig(vocab_size=50, hidden_size=32, num_layers=4, pattern="M*M-", d_state=8, headdim=8, chunk_size=4,
                 num_heads=4),
], ids=["gpt", "hybrid"])
def test_greedy_generation_equals_repeated_full_forwards(cfg):
    model = build_model(cfg, LayerFactory())
    initialize_parameters(model, seed=3)
    model.eval()
    prompt = [1, 7, 3]
    new = generate(model, prompt, 8, temperature=0)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert new == ids[len(prompt):]
    sampled = [generate(model, prompt, 8, temperature=1.0, top_k=5, seed=s) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]  # seeded sampling is reproducible


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_ready):
    out = tmp_path_factory.mktemp("gen")
    assert_ok(run_pretrain(out, ["train.steps=2", "train.eval_interval=0", "data.num_workers=0"], config=HYBRID))
    return out


def test_checkpoint_loads_with_the_trained_weights(trained):
    assert resolve_checkpoint(trained).name == "step_00000002"
    _, model = load_checkpoint_model(trained)
    expected = final_weights(trained)
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name].float()), name


def test_pipeline_checkpoint_loads_to_the_same_weights(tmp_path, corpus_ready):
    assert_ok(run_pretrain(tmp_path, ["train.steps=2", "train.eval_interval=0", "data.num_workers=0",
                                      "parallel.pp=2"], nproc=2, config=HYBRID))
    _, model = load_checkpoint_model(tmp_path)
    assert sum(p.numel() for p in model.parameters()) == 1439456


def test_generate_command_end_to_end(trained):
    proc = subprocess.run([sys.executable, "-m", "gigatron", "generate", "--ckpt", str(trained), "--prompt",
                           "ROMEO:", "--max-new-tokens", "12"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ROMEO:") and "[generate] 12 tokens" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "gigatron", "generate", "--ckpt", str(trained / "nope"), "--prompt",
                          "x"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 2 and "is not a gigatron checkpoint" in bad.stderr
