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
from gigatron.models.layers.recompute import apply_recompute
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


def test_a_recomputed_layer_counts_only_the_input_it_keeps():
    class Layer(nn.Module):
        recompute_as = "layer"

        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.linear(x))

    model = nn.Sequential(Layer(), Layer())
    x = torch.randn(4, 16, requires_grad=True)
    row = 4 * 16 * 4
    # each layer saves its input (linear) and its output (relu); the second's input is the first's output
    assert saved_for_backward_bytes(lambda: model(x).sum(), exclude=model.parameters()) == 3 * row
    apply_recompute(model, "full")
    assert saved_for_backward_bytes(lambda: model(x).sum(), exclude=model.parameters()) == 2 * row  # the inputs


def test_a_fake_layout_gives_any_ranks_shapes_in_one_process():
    from gigatron.config.schema import ParallelConfig
    from gigatron.planning.fake_world import fake_process_layout

    with fake_process_layout(ParallelConfig(tp=4, pp=2, sequence_parallel=True), world_size=16, rank=13) as layout:
        assert (layout.tp_size, layout.tp_rank, layout.pp_rank, layout.data_size) == (4, 1, 1, 2)
        assert layout.sequence_parallel
    assert not torch.distributed.is_initialized()
