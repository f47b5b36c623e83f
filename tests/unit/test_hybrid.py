"""Mamba / Mamba-2 / hybrid models: shapes, parameter counts, the paper's 8B, cached decoding."""

from __future__ import annotations

import pytest
import torch

from gigatron.config import load_config
from gigatron.inference.cached import forward_cached, new_caches
from gigatron.models.gpt.config import GPTConfig
from gigatron.models.hybrid.config import HybridConfig, MambaConfig
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.registry import build_model, get_model_spec
from tests.conftest import REPO

PAPER_PATTERN = "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-"


def small(**overrides) -> HybridConfig:
    base = dict(vocab_size=97, hidden_size=32, num_layers=6, pattern="M-M*M-", d_state=8, headdim=8, ngroups=2,
                chunk_size=4, num_heads=4, num_kv_heads=2, ffn_hidden_size=64)
    base.update(overrides)
    return HybridConfig(**base)


@pytest.mark.parametrize("cfg", [
    small(),
    small(mlp_activation="swiglu", position_embedding="rope", tie_embeddings=True),
    MambaConfig(vocab_size=97, hidden_size=32, num_layers=3, d_state=4),
], ids=["hybrid", "hybrid-swiglu-rope-tied", "mamba1"])
def test_built_parameter_count_matches_formula(cfg) -> None:
    model = build_model(cfg, LayerFactory())
    assert sum(p.numel() for p in model.parameters()) == get_model_spec(cfg.family).num_params(cfg)


@pytest.mark.parametrize(("path", "low", "high"), [
    ("configs/hybrid/8b.yaml", 8.60e9, 8.70e9),
    ("configs/mamba2/8b.yaml", 8.0e9, 8.5e9),
    ("configs/mamba/8b.yaml", 7.5e9, 8.5e9),
])
def test_paper_8b_configs_build_on_meta(path, low, high) -> None:
    cfg = load_config(REPO / path).model
    model = build_model(cfg, LayerFactory(device="meta"))
    built = sum(p.numel() for p in model.parameters())
    assert built == get_model_spec(cfg.family).num_params(cfg)
    assert low < built < high, built


def test_8b_hybrid_pattern_is_the_papers() -> None:
    cfg = load_config(REPO / "configs/hybrid/8b.yaml").model
    assert cfg.layer_pattern == PAPER_PATTERN
    counts = {s: cfg.layer_pattern.count(s) for s in "M*-"}
    assert counts == {"M": 24, "*": 4, "-": 28}  # 43% Mamba-2, 7% attention, 50% MLP


@pytest.mark.parametrize("cfg", [
    small(),
    small(position_embedding="rope", chunk_size=3),
    MambaConfig(vocab_size=97, hidden_size=32, num_layers=3, d_state=4),
    GPTConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2),
], ids=["hybrid", "hybrid-rope", "mamba1", "gpt"])
def test_prefill_then_decode_matches_full_forward(cfg) -> None:
    torch.manual_seed(0)
    model = build_model(cfg, LayerFactory())
    initialize_parameters(model, seed=1)
    model.eval()
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        full = model(ids)
    caches = new_caches(model, 2, 13, "cpu", torch.float32)
    pieces = [forward_cached(model, ids[:, :6], caches)]  # prefill
    pieces += [forward_cached(model, ids[:, t:t + 1], caches) for t in range(6, 13)]  # one token at a time
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_bad_patterns_and_layouts_are_named() -> None:
    from gigatron.config.schema import Config, ParallelConfig

    model = small(pattern="M-X")
    problems = model.validate(Config(model=model, parallel=ParallelConfig(tp=4)))
    text = "\n".join(problems)
    assert "model.pattern has ['X']" in text
    assert "model.pattern has 3 layers but model.num_layers=6" in text
    assert "model.ngroups=2 is not divisible by parallel.tp=4" in text


def test_mamba_families_refuse_attention_and_mlp_layers():
    from gigatron.config import ConfigError
    from gigatron.config.validate import validate_config

    smoke = REPO / "configs" / "hybrid" / "smoke.yaml"  # pattern M-M*M-M-
    for family in ("mamba2", "mamba"):
        with pytest.raises(ConfigError, match=f"model.family={family} has Mamba layers only"):
            validate_config(load_config(smoke, [f"model.family={family}"]), 1)
        with pytest.raises(ConfigError, match="set both to 0 or use model.family=hybrid"):
            validate_config(load_config(smoke, [f"model.family={family}", "model.pattern=null",
                                                "model.attention_ratio=0.1"]), 1)
        validate_config(load_config(smoke, [f"model.family={family}", "model.pattern=MMMMMMMM"]), 1)
