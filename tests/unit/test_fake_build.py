"""Models build from shapes alone under FakeTensorMode, the memory planner's prerequisite: no memory,
parameters in the training dtype, the family's own parameter count."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from gigatron.config.loader import load_config
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.registry import build_model, get_model_spec
from tests.conftest import REPO


@pytest.mark.parametrize(("config", "overrides"), [
    ("gpt/125m.yaml", []),
    ("hybrid/1.3b.yaml", ["parallel.tp=1"]),
    ("tokenformer/150m.yaml", []),
    ("matformer/small.yaml", []),
])
def test_a_shipped_config_builds_under_fake_tensors_in_bf16(config, overrides):
    cfg = load_config(REPO / "configs" / config, overrides)
    with FakeTensorMode():
        model = build_model(cfg.model, LayerFactory(device="cpu", params_dtype=torch.bfloat16))
        params = list(model.parameters())
        out = model(torch.randint(0, cfg.model.vocab_size, (1, 64)))
    assert all(isinstance(p, FakeTensor) and p.dtype == torch.bfloat16 for p in params)
    # parameters() yields a tied embedding once, as the family's count has it
    assert sum(p.numel() for p in params) == get_model_spec(cfg.model.family).num_params(cfg.model)
    assert tuple(out.shape) == (1, 64, cfg.model.vocab_size)
