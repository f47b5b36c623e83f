"""Activation recomputation: bitwise the same loss and gradients as without it for every family, less
memory kept for backward, the same dropout masks, and config errors that name the keys."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from gigatron.config import ConfigError
from gigatron.config.loader import config_from_dict, load_config
from gigatron.config.validate import validate_config
from gigatron.models.fit.config import FITConfig
from gigatron.models.fit.model import FITEncoder
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.layers.recompute import apply_recompute, stack_layers
from gigatron.models.registry import build_model
from gigatron.models.t2i.config import T2IConfig
from gigatron.models.t2i.model import T2IModel
from gigatron.planning.activations import saved_for_backward_bytes
from tests.conftest import REPO

SETTINGS = {
    "selective-all": {"granularity": "selective", "modules": ["core_attn", "mlp", "layernorm", "mamba"]},
    "full-uniform-1": {"granularity": "full"},
    "full-uniform-2": {"granularity": "full", "num_layers": 2},
    "full-block-1": {"granularity": "full", "method": "block", "num_layers": 1},
}

LM_MODELS = {
    "gpt": ("gpt/smoke.yaml", []),
    "hybrid": ("hybrid/smoke.yaml", []),
    "mamba2": ("hybrid/smoke.yaml", ["model.family=mamba2", "model.pattern=MMMM", "model.num_layers=4"]),
    "mamba": ("hybrid/smoke.yaml", ["model.family=mamba", "model.pattern=MMMM", "model.num_layers=4"]),
    "tokenformer": ("tokenformer/smoke.yaml", []),
    "matformer-gpt": ("matformer/smoke.yaml", []),
}


def _lm_step(config: str, overrides: list[str], setting: dict | None, granularity: float | None = None):
    """Loss, gradients and bytes kept for backward of one forward/backward of a smoke LM."""
    from gigatron.models.layers.nested_ffn import ffn_granularity

    cfg = load_config(REPO / "configs" / config, overrides)
    factory = LayerFactory()
    model = build_model(cfg.model, factory)
    initialize_parameters(model, 0)
    if setting is not None:
        apply_recompute(model, **setting)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))

    def loss():
        return factory.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).mean()

    with ffn_granularity(model, granularity) if granularity is not None else torch.enable_grad():
        value = loss()
        value.backward()
        saved = saved_for_backward_bytes(loss, exclude=model.parameters())
    return value.detach(), [p.grad for p in model.parameters()], saved


@pytest.mark.parametrize("family", list(LM_MODELS))
def test_every_setting_gives_bitwise_the_loss_and_gradients_of_no_recompute(family):
    config, overrides = LM_MODELS[family]
    granularity = 0.5 if family.startswith("matformer") else None  # a submodel: the backward must see its width
    loss, grads, saved = _lm_step(config, overrides, None, granularity)
    for name, setting in SETTINGS.items():
        if family in ("mamba", "mamba2") and setting.get("modules"):
            setting = {**setting, "modules": ["mamba", "layernorm"]}
        got_loss, got_grads, got_saved = _lm_step(config, overrides, setting, granularity)
        assert torch.equal(got_loss, loss), name
        assert all(torch.equal(a, b) for a, b in zip(got_grads, grads, strict=True)), name
        assert got_saved < saved, (name, got_saved, saved)


def test_full_recompute_keeps_far_less_than_selective():
    _, _, none = _lm_step("gpt/smoke.yaml", [], None)
    _, _, selective = _lm_step("gpt/smoke.yaml", [], SETTINGS["selective-all"])
    _, _, full = _lm_step("gpt/smoke.yaml", [], SETTINGS["full-uniform-1"])
    assert full < selective < none


def test_recomputed_dropout_draws_the_same_masks():
    cfg = load_config(REPO / "configs/gpt/smoke.yaml", ["model.hidden_dropout=0.2"])

    def step(setting):
        model = build_model(cfg.model, LayerFactory())
        initialize_parameters(model, 0)
        if setting:
            apply_recompute(model, **setting)
        tokens = torch.arange(64).view(2, 32) % cfg.model.vocab_size
        torch.manual_seed(5)
        loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()], model

    loss, grads, model = step(None)
    for setting in (SETTINGS["full-uniform-1"], SETTINGS["selective-all"]):
        got_loss, got_grads, _ = step(setting)
        assert torch.equal(got_loss, loss)
        assert all(torch.equal(a, b) for a, b in zip(got_grads, grads, strict=True))
    # dropout is really on in training and off in evaluation
    tokens = torch.arange(32).view(1, 32)
    assert not torch.equal(model(tokens), model(tokens))
    model.eval()
    assert torch.equal(model(tokens), model(tokens))


def _fit_step(setting):
    cfg = FITConfig(patch_size=2, group_size=2, latents_per_group=3, hidden_size=32, num_heads=4,
                    layers="(1)1(1)1(1)", num_classes=3)
    model = FITEncoder(cfg, LayerFactory())
    initialize_parameters(model, 0)
    if setting:
        apply_recompute(model, **setting)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loss = model(images).square().sum()
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()], model


def _t2i_step(setting):
    cfg = T2IConfig(hidden_size=32, num_heads=2, num_layers=3, text_hidden_size=32, text_heads=2, caption_len=8,
                    vocab_size=300, adaln_lora_rank=4)
    model = T2IModel(cfg, LayerFactory())
    initialize_parameters(model, 0)
    with torch.no_grad():  # the zero-initialised (adaLN-Zero) projections would hide every path
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    if setting:
        apply_recompute(model, **setting)
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, cfg.channels, 8, 8, generator=generator)
    captions = torch.tensor([[5, 6, 7, -1, -1, -1, -1, -1], [8, 9, -1, -1, -1, -1, -1, -1]])
    loss = model(x_t, torch.tensor([0.3, 0.7]), {"caption": captions}).square().sum()
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()], model


@pytest.mark.parametrize("step", [_fit_step, _t2i_step], ids=["fit", "t2i"])
def test_image_models_recompute_blocks_and_modules_exactly(step):
    loss, grads, model = step(None)
    assert len(stack_layers(model)) == 3  # FIT blocks / DiT blocks, not their inner layers
    for setting in (SETTINGS["full-uniform-1"], SETTINGS["full-block-1"], SETTINGS["selective-all"]):
        got_loss, got_grads, _ = step(setting)
        assert torch.equal(got_loss, loss)
        assert all(torch.equal(a, b) for a, b in zip(got_grads, grads, strict=True))
    with pytest.raises(ValueError, match="recompute_method=block"):
        step(SETTINGS["full-uniform-2"])


def _validate(*overrides: str, config: str = "gpt/smoke.yaml", world: int = 1) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(load_config(REPO / "configs" / config, list(overrides)), world)
    return str(info.value)


def test_bad_settings_are_config_errors_naming_the_keys():
    assert "train.recompute_modules has ['attention']" in _validate("train.recompute=selective",
                                                                    "train.recompute_modules=[attention]")
    assert "needs train.recompute_modules" in _validate("train.recompute=selective", "train.recompute_modules=[]")
    assert "larger than the model's 2 layers" in _validate("train.recompute=full", "train.recompute_num_layers=3",
                                                           "model.num_layers=2")
    assert "applies to train.recompute=full only" in _validate("train.recompute=selective",
                                                               "train.recompute_num_layers=1")
    message = _validate("train.recompute=full", "train.recompute_method=block", "train.recompute_num_layers=3",
                        "model.num_layers=4", "parallel.pp=2", world=2)
    assert "larger than the 2 layers of a pipeline stage" in message
    assert "train.recompute: 'partial' is not one of" in _validate("train.recompute=partial")
    assert "does not support" in _validate("train.recompute=full", "train.recompute_num_layers=2",
                                           config="fit/smoke.yaml")
    assert "does not support" in _validate("train.recompute=full", "train.recompute_num_layers=2",
                                           config="t2i/smoke.yaml")


def test_fit_checkpoint_blocks_is_replaced_by_train_recompute():
    raw = {"model": {"family": "fit", "checkpoint_blocks": True}}
    with pytest.raises(ConfigError, match="model.checkpoint_blocks has been replaced by train.recompute"):
        config_from_dict(raw)
    # a checkpoint written before the change still loads, with the recompute it asked for
    assert config_from_dict(raw, migrate=True).train.recompute == "full"
    assert config_from_dict({"model": {"family": "fit", "checkpoint_blocks": False}}, migrate=True).train.recompute == "none"
    assert load_config(REPO / "configs/fit/gigapixel.yaml").train.recompute == "full"


def test_sequence_parallel_settings_are_checked_before_any_process_starts():
    assert "needs parallel.tp > 1" in _validate("parallel.sequence_parallel=true")
    assert "does not support sequence parallelism" in _validate("parallel.sequence_parallel=true", "parallel.tp=2",
                                                                config="t2i/smoke.yaml", world=2)
    message = _validate("parallel.sequence_parallel=true", "parallel.tp=4", "data.seq_len=130", "model.num_heads=4",
                        world=4)
    assert "make data.seq_len divisible by parallel.tp=4" in message
    validate_config(load_config(REPO / "configs/hybrid/smoke.yaml", ["parallel.sequence_parallel=true",
                                                                     "parallel.tp=2"]), 2)


def test_recomputed_norms_release_their_outputs_until_the_layers_backward():
    """bf16, from shapes: each block's two RMSNorms stop keeping their fp32 input copy (4 sbh), their bf16
    normalised output (2 sbh) and their fp32 1/rms (4 sb); they keep their inputs (2 sbh each) and
    release their outputs (2 sbh each) until the block's backward, as Megatron-LM's layernorm
    recomputation does. The final norm, outside the blocks, keeps its output: it saves 4 sbh + 4 sb."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cfg = load_config(REPO / "configs/gpt/smoke.yaml")
    saved = {}
    for granularity in ("none", "selective"):
        with FakeTensorMode():
            model = build_model(cfg.model, LayerFactory(device="cpu", params_dtype=torch.bfloat16))
            apply_recompute(model, granularity, modules=["layernorm"])
            tokens = torch.randint(0, cfg.model.vocab_size, (2, 64))
            saved[granularity] = saved_for_backward_bytes(functools.partial(model, tokens),
                                                          exclude=model.parameters())
    sb, h, layers = 2 * 64, cfg.model.hidden_size, cfg.model.num_layers
    per_block = 2 * (4 + 2 + 2 - 2) * sb * h + 2 * 4 * sb  # two norms: copy, output, released output, less input
    final = (4 + 2 - 2) * sb * h + 4 * sb
    assert saved["none"] - saved["selective"] == layers * per_block + final
    # and the numbers are the same as without recomputation (in fp32, on real tensors)
    loss, grads, _ = _lm_step("gpt/smoke.yaml", [], None)
    got_loss, got_grads, _ = _lm_step("gpt/smoke.yaml", [], {"granularity": "selective", "modules": ["layernorm"]})
    assert torch.equal(loss, got_loss) and all(torch.equal(a, b) for a, b in zip(grads, got_grads, strict=True))
