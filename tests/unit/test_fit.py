"""FIT: layer strings, grouped patches, group locality of local layers / read / write, reduction to a
plain transformer with one group, chunk-causal global attention, checkpointing, the encoder and the
RIN-style diffusion decoder, against naive references written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gigatron.config.schema import Config, ImagesConfig, ParallelConfig
from gigatron.models.fit.config import FITConfig, FITDiffusionConfig
from gigatron.models.fit.model import FITDiffusion, FITEncoder, flops_per_token
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.fit_blocks import chunk_causal_mask, parse_layers
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.layers.patches import GroupedPatchEmbedding, patchify_groups, unpatchify_groups
from gigatron.models.layers.recompute import apply_recompute


def _encoder(**overrides) -> FITEncoder:
    cfg = FITConfig(**{"patch_size": 2, "group_size": 2, "latents_per_group": 3, "hidden_size": 32,
                       "num_heads": 4, "layers": "(1)1(1)", "num_classes": 3, **overrides})
    model = FITEncoder(cfg, LayerFactory())
    initialize_parameters(model, seed=3)
    return model.double()


# ---------------------------------------------------------------- layer strings and patches


@pytest.mark.parametrize(("spec", "blocks"), [("(2)4(2)4(2)", [(2, 4), (2, 4), (2, 0)]), ("(3)", [(3, 0)]),
                                              ("(1)2", [(1, 2)]), ("(0)2(1)", [(0, 2), (1, 0)])])
def test_layer_strings(spec, blocks):
    assert parse_layers(spec) == blocks


@pytest.mark.parametrize("spec", ["", "2(2)", "(2)4(", "(2)(2)", "(0)", "(a)2", "(2)4 (2)"])
def test_bad_layer_strings_are_named(spec):
    with pytest.raises(ValueError, match="FIT layer string"):
        parse_layers(spec)


def test_patch_groups_follow_the_definition():
    images = torch.randn(2, 3, 12, 8)
    p, g = 2, 2
    tokens = patchify_groups(images, p, g)
    assert tokens.shape == (2, 3 * 2, 4, 12)
    # Token (group (R, C), slot (r, c)) is patch (R*g + r, C*g + c), pixels in (row, column, channel) order.
    for gi in range(6):
        big_r, big_c = divmod(gi, 2)
        for slot in range(4):
            r, c = divmod(slot, 2)
            row, col = (big_r * g + r) * p, (big_c * g + c) * p
            patch = images[:, :, row:row + p, col:col + p].permute(0, 2, 3, 1).reshape(2, -1)
            assert torch.equal(tokens[:, gi, slot], patch)
    assert torch.equal(unpatchify_groups(tokens, p, g, 12, 8, 3), images)


def test_grid_that_does_not_divide_is_named():
    with pytest.raises(ValueError, match="12x8 pixels does not divide into groups of 4x4 patches"):
        patchify_groups(torch.zeros(1, 3, 12, 8), 2, 4)


def test_chunked_patch_embedding_equals_one_linear_in_value_and_gradient():
    embed = GroupedPatchEmbedding(LayerFactory(), 3, 2, 2, 16, std=0.1)
    initialize_parameters(embed, seed=0)
    pixels = torch.randint(0, 256, (2, 3, 12, 8), dtype=torch.uint8)
    out = embed(pixels)
    reference = F.linear(patchify_groups(pixels.float() / 127.5 - 1, 2, 2), embed.proj.weight, embed.proj.bias)
    torch.testing.assert_close(out, reference)
    grad = torch.randn_like(out)
    (weight_grad,) = torch.autograd.grad(out, embed.proj.weight, grad)
    (reference_grad,) = torch.autograd.grad(reference, embed.proj.weight, grad)
    torch.testing.assert_close(weight_grad, reference_grad)


# ---------------------------------------------------------------- locality


def _capture(module: torch.nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    return seen


def test_read_and_write_stay_within_groups():
    # Larger weights than the default init, so that group 0's change is large after three hops.
    model = _encoder(layers="(1)1(1)", init_std=0.3)
    backbone = model.backbone
    block = backbone.core.blocks[0]
    local_out, read_out, write_out = _capture(block.local[-1]), _capture(block.read), _capture(block.write)
    images = torch.randn(1, 3, 8, 8, dtype=torch.float64)  # 2x2 groups of 2x2 patches
    changed = images.clone()
    changed[:, :, :4, :4] += 1.0  # group 0 only
    with torch.no_grad():
        final_a, _ = backbone(*backbone.initial(images))
        final_b, _ = backbone(*backbone.initial(changed))
    groups = 4
    for seen, name in ((local_out, "local"), (read_out, "read")):
        before, after = seen[0].view(groups, -1), seen[1].view(groups, -1)
        assert not torch.allclose(before[0], after[0]), name
        torch.testing.assert_close(before[1:], after[1:], rtol=0, atol=0, msg=name)
    # After the global layers every group has heard of group 0: write changes all of them.
    before, after = write_out[0].view(groups, -1), write_out[1].view(groups, -1)
    for g in range(groups):
        assert (before[g] - after[g]).abs().max() > 1e-6, g
    assert all((final_a[0, g] - final_b[0, g]).abs().max() > 1e-6 for g in range(groups))


def test_chunk_causal_global_attention_hides_later_groups():
    model = _encoder(layers="(1)2", global_causal=True, init_std=0.3)
    backbone = model.backbone
    images = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    changed = images.clone()
    changed[:, :, 4:, :4] += 1.0  # group 2 of 0..3 (bottom left)
    with torch.no_grad():
        _, latents_a = backbone(*backbone.initial(images))
        _, latents_b = backbone(*backbone.initial(changed))
    torch.testing.assert_close(latents_a[:, :2], latents_b[:, :2], rtol=0, atol=0)
    assert (latents_a[:, 2:] - latents_b[:, 2:]).abs().amax(dim=(0, 2, 3)).min() > 1e-6


def test_chunk_causal_mask_lets_prefix_be_seen_but_see_nothing_else():
    mask = chunk_causal_mask(groups=2, latents_per_group=2, prefix=1, device="cpu")
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]],
                            dtype=torch.bool)
    assert torch.equal(mask, expected)


# ---------------------------------------------------------------- one group = a plain transformer


def _rms(x: torch.Tensor, norm) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight


def _naive_attention(q_in: torch.Tensor, kv_in: torch.Tensor, attn) -> torch.Tensor:
    heads = attn.heads
    q, k, v = attn.q(q_in), attn.k(kv_in), attn.v(kv_in)
    split = lambda x: x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], -1)
    return attn.o(out)


def _naive_mlp(x: torch.Tensor, mlp) -> torch.Tensor:
    h = mlp.up(x)
    return mlp.down(0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3))))


def _naive_layer(x: torch.Tensor, layer, context: torch.Tensor | None = None) -> torch.Tensor:
    if context is None:
        x = x + _naive_attention(_rms(x, layer.attn_norm), _rms(x, layer.attn_norm), layer.attn)
    else:
        x = x + _naive_attention(_rms(x, layer.query_norm), _rms(context, layer.context_norm), layer.attn)
    return x + _naive_mlp(_rms(x, layer.mlp_norm), layer.mlp)


def test_one_group_with_as_many_latents_as_tokens_is_a_plain_transformer():
    """One group of 4 tokens and 4 latents: local layers are a transformer over all tokens, global
    layers a transformer over all latents, read/write plain cross-attention layers."""
    model = _encoder(layers="(2)2(1)", latents_per_group=4)
    backbone = model.backbone
    images = torch.randn(2, 3, 4, 4, dtype=torch.float64)  # 1 group of 2x2 patches
    with torch.no_grad():
        tokens, latents = backbone.initial(images)
        assert tokens.shape[1] == 1 and latents.shape[2] == tokens.shape[2] == 4
        out_tokens, out_latents = backbone(tokens, latents)
        x, z = tokens[:, 0], latents[:, 0]
        first, last = backbone.core.blocks
        for layer in first.local:
            x = _naive_layer(x, layer)
        z = _naive_layer(z, first.read, context=x)
        for layer in first.globals:
            z = _naive_layer(z, layer)
        x = _naive_layer(x, first.write, context=z)
        for layer in last.local:
            x = _naive_layer(x, layer)
    torch.testing.assert_close(out_tokens[:, 0], x)
    torch.testing.assert_close(out_latents[:, 0], z)


def test_local_layers_are_a_transformer_per_group():
    model = _encoder(layers="(2)")
    backbone = model.backbone
    images = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        tokens, latents = backbone.initial(images)
        out, _ = backbone(tokens, latents)
        for g in range(tokens.shape[1]):
            x = tokens[:, g]
            for layer in backbone.core.blocks[0].local:
                x = _naive_layer(x, layer)
            torch.testing.assert_close(out[:, g], x)


# ---------------------------------------------------------------- encoder and decoder


def test_encoder_runs_at_any_divisible_size_and_recomputing_blocks_changes_nothing():
    plain, checkpointed = _encoder(), _encoder()
    apply_recompute(checkpointed, "full")
    checkpointed.load_state_dict(plain.state_dict())
    for size in (8, 16):
        images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
        grads = []
        for model in (plain, checkpointed):
            model.zero_grad()
            logits = model(images)
            assert logits.shape == (2, 3)
            logits.square().sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        torch.testing.assert_close(grads[0], grads[1])


def test_validation_names_the_keys():
    cfg = FITConfig(patch_size=4, group_size=4, hidden_size=30, num_classes=2, layers="(2)x")
    run = Config(model=cfg, parallel=ParallelConfig(tp=2), images=ImagesConfig(image_size=40, classes=["a", "b", "c"]))
    problems = " | ".join(cfg.validate(run))
    for text in ("model.layers", "model.hidden_size=30", "images.image_size=40", "parallel.tp=2", "model.num_classes=2"):
        assert text in problems
    decoder = FITDiffusionConfig(layers="(1)2", num_classes=0)
    assert "last block must be local" in " ".join(decoder.validate(Config(model=decoder)))


def _decoder(**overrides) -> FITDiffusion:
    cfg = FITDiffusionConfig(**{"patch_size": 2, "group_size": 2, "latents_per_group": 2, "hidden_size": 32,
                                "num_heads": 4, "layers": "(1)1(1)", "num_classes": 2, **overrides})
    model = FITDiffusion(cfg, LayerFactory())
    initialize_parameters(model, seed=5)
    return model.double()


def test_self_conditioning_feeds_the_first_pass_latents_to_flagged_samples_only():
    model = _decoder()
    x, t, labels = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0.3, 0.7]), torch.tensor([0, 1])
    with torch.no_grad():
        _, first = model.predict(x, t, labels, None)
        expected, _ = model.predict(x, t, labels, first * torch.tensor([1.0, 0.0]).double()[:, None, None, None])
        plain, _ = model.predict(x, t, labels, None)
        out = model(x, t, {"label": labels, "self_condition": torch.tensor([True, False])})
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out[1], plain[1])
    assert not torch.allclose(out[0], plain[0])


def test_dropped_label_is_the_null_class_and_sampling_carries_state():
    model = _decoder()
    x, t = torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.tensor([0.5])
    with torch.no_grad():
        null = model.predict(x, t, torch.tensor([-1]), None)[0]
        explicit = model.predict(x, t, torch.tensor([2]), None)[0]  # index num_classes = "no condition"
        images = model.sample(torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1]), steps=3, guidance=3.0)
    torch.testing.assert_close(null, explicit)
    assert images.shape == (2, 3, 8, 8) and images.abs().max() <= 1.0


def test_flops_count_matches_the_definition_for_local_layers_only():
    cfg = FITConfig(patch_size=4, group_size=2, hidden_size=8, layers="(1)", mlp_ratio=4.0, channels=3)
    tokens = 16  # 4 groups of 4
    per_token_forward = 2 * 48 * 8 + 2 * 4 * 8 * 8 + 4 * 4 * 8 + 2 * 2 * 8 * 32
    assert flops_per_token(cfg, tokens) == pytest.approx(3 * per_token_forward)


def test_flops_match_pytorchs_counter():
    """Forward FLOPs counted by PyTorch (matmuls and attention) against a third of our count."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _encoder(layers="(2)2(1)", latents_per_group=3)
    images = torch.randn(1, 3, 16, 16, dtype=torch.float64)  # 64 tokens in 16 groups of 4
    with FlopCounterMode(display=False) as counter:
        model.backbone(*model.backbone.initial(images))
    assert counter.get_total_flops() == pytest.approx(flops_per_token(model.backbone.cfg, 64) * 64 / 3, rel=0.1)
