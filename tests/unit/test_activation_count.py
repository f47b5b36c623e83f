"""saved_for_backward_bytes: exact on a case counted by hand, and the same count from shapes alone
(FakeTensorMode) as from a real forward of every LM family's smoke model."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from gigatron.config.loader import load_config
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.registry import build_model
from gigatron.planning.activations import saved_for_backward_bytes
from tests.conftest import REPO


def test_a_linear_and_relu_save_their_input_and_output_once():
    layer = nn.Linear(16, 32)
    x = torch.randn(4, 16, requires_grad=True)
    # linear saves its input (its weight is a parameter, excluded); relu saves its output; the view
    # of the output that a second op saves is the same storage, counted once.
    saved = saved_for_backward_bytes(lambda: torch.relu(layer(x)).view(4, 2, 16).exp(),
                                     exclude=layer.parameters())
    assert saved == 4 * 16 * 4 + 4 * 32 * 4 + 4 * 32 * 4  # x, relu's output, exp's output


def _count(config: str, fake: bool) -> int:
    cfg = load_config(REPO / "configs" / config)
    with FakeTensorMode() if fake else contextlib.nullcontext():
        factory = LayerFactory(device="cpu", params_dtype=torch.float32)
        model = build_model(cfg.model, factory)
        tokens = torch.randint(0, cfg.model.vocab_size, (2, 65))
        return saved_for_backward_bytes(
            lambda: factory.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).mean(),
            exclude=model.parameters())


@pytest.mark.parametrize("config", ["gpt/smoke.yaml", "hybrid/smoke.yaml", "tokenformer/smoke.yaml",
                                    "matformer/smoke.yaml"])
def test_counting_from_shapes_equals_counting_a_real_forward(config):
    real = _count(config, fake=False)
    assert real > 0
    assert _count(config, fake=True) == real
