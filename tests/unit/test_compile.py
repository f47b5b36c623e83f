"""`train.compile`: every family's compiled layers give eager's loss and gradients (within fp32
rounding) with and without activation recomputation, MatFormer granularities recompile rather than
reuse a wrong graph, names and checkpoints are unchanged, and ZeRO-3 is refused with the reason.

Inductor (what training uses) runs for the GPT; the other families use the aot_eager_decomp_partition
backend, which traces, guards, decomposes and partitions forward and backward as inductor's path does
but generates no kernels, so that the suite does not spend minutes in a C++ compiler."""

from __future__ import annotations

import pytest
import torch

from gigatron.config import ConfigError
from gigatron.config.loader import load_config
from gigatron.config.validate import validate_config
from gigatron.models.fit.config import FITConfig
from gigatron.models.fit.model import FITEncoder
from gigatron.models.layers.compile import apply_compile, compile_report
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.layers.nested_ffn import ffn_granularity
from gigatron.models.layers.recompute import apply_recompute
from gigatron.models.registry import build_model
from gigatron.models.t2i.config import T2IConfig
from gigatron.models.t2i.model import T2IModel
from tests.conftest import REPO

SETTINGS = {
    "none": None,
    "selective-all": {"granularity": "selective", "modules": ["core_attn", "mlp", "layernorm", "mamba"]},
    "full": {"granularity": "full"},
}
AOT = "aot_eager_decomp_partition"
# (config, overrides, backend, recompute settings): the hybrid's attention and MLP layers are the GPT's,
# so it runs full recomputation only; the Mamba family covers the mixer as a selective region.
LM_MODELS = {
    "gpt": ("gpt/smoke.yaml", [], "inductor", list(SETTINGS)),
    "hybrid": ("hybrid/smoke.yaml", [], AOT, ["full"]),
    "mamba": ("hybrid/smoke.yaml", ["model.family=mamba", "model.pattern=MMMM", "model.num_layers=4"], AOT,
              ["none", "selective-all"]),
    "tokenformer": ("tokenformer/smoke.yaml", [], AOT, list(SETTINGS)),
}


def _lm_steps(config: str, overrides: list[str], setting: dict | None, backend: str | None, steps: int = 2):
    """Losses and final gradients of `steps` SGD steps (so the second sees updated weights)."""
    cfg = load_config(REPO / "configs" / config, overrides)
    factory = LayerFactory()
    model = build_model(cfg.model, factory)
    initialize_parameters(model, 0)
    recompute = apply_recompute(model, **setting) if setting else None
    plan = apply_compile(model, backend is not None, recompute, backend=backend or "inductor")
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = factory.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).mean()
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    return losses, {name: p.grad for name, p in model.named_parameters()}, plan, model


def _assert_close(got, want) -> None:
    got_losses, got_grads = got
    want_losses, want_grads = want
    assert got_losses == pytest.approx(want_losses, rel=1e-6)
    assert got_grads.keys() == want_grads.keys()  # the same parameter names
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", list(LM_MODELS))
def test_compiled_layers_train_like_eager_with_every_recompute_setting(family):
    config, overrides, backend, names = LM_MODELS[family]
    for name in names:
        setting = SETTINGS[name]
        if family == "mamba" and setting and setting.get("modules"):
            setting = {**setting, "modules": ["mamba", "layernorm"]}
        eager = _lm_steps(config, overrides, setting, None)
        compiled = _lm_steps(config, overrides, setting, backend)
        _assert_close(compiled[:2], eager[:2])
        plan, model = compiled[2], compiled[3]
        if name == "selective-all":
            # a layer holding recompute regions is compiled one level down, the regions included
            assert not plan.layers and plan.parts, plan
        else:
            assert len(plan.layers) == len(list(m for m in model.modules() if getattr(m, "recompute_as", "") == "layer"))
        # the compiled forwards are instance attributes: nothing in the state dict changes
        assert model.state_dict().keys() == eager[3].state_dict().keys()
    assert "graphs" in compile_report()


def test_matformer_granularities_each_get_their_own_graph():
    config, overrides = "matformer/smoke.yaml", []

    def run(backend):
        cfg = load_config(REPO / "configs" / config, overrides)
        factory = LayerFactory()
        model = build_model(cfg.model, factory)
        initialize_parameters(model, 0)
        apply_compile(model, backend is not None, apply_recompute(model, "full"), backend=backend or "inductor")
        tokens = torch.randint(0, cfg.model.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
        out = []
        for granularity in (1.0, 0.25, 0.5, 0.25):
            model.zero_grad()
            with ffn_granularity(model, granularity):
                loss = factory.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).mean()
                loss.backward()
            out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        return out

    for (got_loss, got_grads), (loss, grads) in zip(run(AOT), run(None), strict=True):
        _assert_close(([got_loss], got_grads), ([loss], grads))
    # different widths give different losses: a reused graph would have given the same
    assert len({loss for loss, _ in run(None)}) == 3


def _fit_loss(model: torch.nn.Module) -> torch.Tensor:
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return model(images).square().sum()


def _t2i_loss(model: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, model.cfg.channels, 8, 8, generator=generator)
    captions = torch.tensor([[5, 6, 7, -1, -1, -1, -1, -1], [8, 9, -1, -1, -1, -1, -1, -1]])
    return model(x_t, torch.tensor([0.3, 0.7]), {"caption": captions}).square().sum()


IMAGE_MODELS = {
    "fit": (lambda: FITEncoder(FITConfig(patch_size=2, group_size=2, latents_per_group=3, hidden_size=32,
                                         num_heads=4, layers="(1)1(1)1(1)", num_classes=3), LayerFactory()),
            _fit_loss),
    "t2i": (lambda: T2IModel(T2IConfig(hidden_size=32, num_heads=2, num_layers=3, text_hidden_size=32, text_heads=2,
                                       caption_len=8, vocab_size=300, adaln_lora_rank=4), LayerFactory()),
            _t2i_loss),
}


@pytest.mark.parametrize("family", list(IMAGE_MODELS))
def test_image_model_blocks_compile_like_eager(family):
    build, loss_of = IMAGE_MODELS[family]

    def step(compiled: bool):
        model = build()
        initialize_parameters(model, 0)
        with torch.no_grad():  # the zero-initialised (adaLN-Zero) projections would hide every path
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        plan = apply_compile(model, compiled, apply_recompute(model, "full"), backend=AOT)
        loss = loss_of(model)
        loss.backward()
        return [loss.item()], {n: p.grad for n, p in model.named_parameters()}, plan

    *eager, _ = step(False)
    *compiled, plan = step(True)
    assert len(plan.layers) == 3  # FIT blocks / DiT blocks
    _assert_close(compiled, eager)


def test_compile_with_zero3_is_a_config_error_naming_both_keys():
    cfg = load_config(REPO / "configs/gpt/smoke.yaml", ["train.compile=true", "parallel.zero_stage=3"])
    with pytest.raises(ConfigError, match=r"train.compile=true does not combine with parallel.zero_stage=3"):
        validate_config(cfg, 2)
    validate_config(load_config(REPO / "configs/gpt/smoke.yaml", ["train.compile=true", "parallel.zero_stage=2"]), 2)


def test_unknown_compile_backend_is_a_config_error_listing_the_valid_ones():
    cfg = load_config(REPO / "configs/gpt/smoke.yaml", ["train.compile=true", "train.compile_backend=inductr"])
    with pytest.raises(ConfigError, match=r"train.compile_backend='inductr' is not a torch.compile backend; "
                                          r"valid: .*aot_eager.*inductor"):
        validate_config(cfg, 1)
