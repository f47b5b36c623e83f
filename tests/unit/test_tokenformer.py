"""TokenFormer: Pattention against its definition, the model, and growth by appending tokens."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint, InMemoryCheckpoint, write_consolidated
from gigatron.config import config_from_dict
from gigatron.inference.cached import forward_cached, new_caches
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.registry import build_model, get_model_spec
from gigatron.models.tokenformer.config import TokenFormerConfig
from gigatron.objectives.growth import GrownCheckpoint, GrowthError, grow


def naive_pattention(x, keys, values, normalization, scale):
    """The formulas of the paper, written out element by element over rows."""
    a = x @ keys.t()
    rows = []
    for row in a.reshape(-1, a.shape[-1]):
        if normalization == "l2_norm_gelu":
            theta = F.gelu(row / math.sqrt(float((row ** 2).sum())) * math.sqrt(scale))
        elif normalization == "gelu_l2_norm":
            g = F.gelu(row)
            theta = g / math.sqrt(float((g ** 2).sum())) * math.sqrt(scale)
        else:
            theta = torch.exp(row) / torch.exp(row).sum() * scale
        rows.append(theta)
    return torch.stack(rows).reshape(a.shape) @ values


@pytest.mark.parametrize("normalization", ["l2_norm_gelu", "gelu_l2_norm", "softmax_n"])
@pytest.mark.parametrize("scale", [None, 7])
def test_pattention_computes_its_definition(normalization, scale):
    layer = LayerFactory().pattention(12, 10, 24, normalization=normalization, scale_tokens=scale, key_std=0.5,
                                      value_std=0.1)
    initialize_parameters(layer, seed=3)
    x = torch.randn(2, 5, 12)
    expected = naive_pattention(x, layer.key_tokens, layer.value_tokens, normalization, scale or 24)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def authors_nonlinear_norm(inputs: torch.Tensor, normalize_type: str) -> torch.Tensor:
    """The TokenFormer authors' `Pattention.nonlinear_norm_func` (megatron/model/tokenformer.py),
    restated: torch.norm, no epsilon, scale = the number of tokens."""
    n = inputs.shape[-1]
    if normalize_type == "l2_norm_gelu":
        return F.gelu(inputs / torch.norm(inputs, p=2, dim=-1, keepdim=True) * math.sqrt(n))
    if normalize_type == "gelu_l2_norm":
        g = F.gelu(inputs)
        return g / torch.norm(g, p=2, dim=-1, keepdim=True) * math.sqrt(n)
    e = torch.exp(inputs)
    return e / torch.norm(e, p=1, dim=-1, keepdim=True) * n


@pytest.mark.parametrize("normalization", ["l2_norm_gelu", "gelu_l2_norm", "softmax_n"])
def test_pattention_equals_the_authors_definition_even_for_rows_of_tiny_scores(normalization):
    # An epsilon under the norm (this layer once had 1e-6) is invisible for ordinary rows but
    # changes rows whose scores are all tiny: here ||A||_2 is ~1e-4.
    layer = LayerFactory().pattention(12, 10, 24, normalization=normalization, scale_tokens=None, key_std=0.5,
                                      value_std=0.1)
    initialize_parameters(layer, seed=3)
    for magnitude in (1.0, 1e-5):
        x = torch.randn(2, 5, 12, dtype=torch.float64) * magnitude
        layer64 = layer.double()
        scores = x @ layer64.key_tokens.t()
        kind = "softmax" if normalization == "softmax_n" else normalization
        expected = authors_nonlinear_norm(scores, kind) @ layer64.value_tokens
        torch.testing.assert_close(layer64(x), expected, rtol=1e-10, atol=1e-12)


def small(**kw) -> TokenFormerConfig:
    base = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, qkv_tokens=16, ffn_tokens=48)
    return TokenFormerConfig(**{**base, **kw})


def test_model_shape_parameter_count_and_cached_decoding():
    cfg = small()
    model = build_model(cfg, LayerFactory())
    initialize_parameters(model, seed=1)
    assert sum(p.numel() for p in model.parameters()) == get_model_spec("tokenformer").num_params(cfg)
    assert model[-1].output.weight is model[0].tokens.weight  # tied
    assert cfg.rotary_dim == 2  # 25% of a head of 8
    ids = torch.randint(0, 97, (2, 12))
    full = model(ids)
    caches = new_caches(model, 2, 12, "cpu", torch.float32)
    stepwise = torch.cat([forward_cached(model, ids[:, :7], caches), forward_cached(model, ids[:, 7:], caches)], 1)
    torch.testing.assert_close(stepwise, full, rtol=1e-5, atol=1e-5)


def test_values_are_initialised_with_the_papers_std():
    cfg = small(num_layers=4, hidden_size=64, qkv_tokens=512, ffn_tokens=512)
    model = build_model(cfg, LayerFactory())
    initialize_parameters(model, seed=2)
    values = model[1].ffn.value_tokens
    assert float(values.std()) == pytest.approx(2 / (4 * math.sqrt(64)), rel=0.05)
    assert float(model[1].ffn.key_tokens.std()) == pytest.approx(0.02, rel=0.05)


def source_checkpoint(tmp_path, cfg: TokenFormerConfig):
    model = build_model(cfg, LayerFactory())
    initialize_parameters(model, seed=4)
    full = config_from_dict({"model": {"family": "tokenformer", **dataclasses.asdict(cfg)},
                             "data": {"seq_len": 16}})
    tensors = {name: p.detach().clone() for name, p in model.named_parameters()}
    write_consolidated(InMemoryCheckpoint(tmp_path / "src", full, tensors), tmp_path / "src", log=lambda _: None)
    return ConsolidatedCheckpoint(tmp_path / "src"), model.eval()


@pytest.mark.parametrize("normalization", ["l2_norm_gelu", "gelu_l2_norm"])
def test_preserving_growth_keeps_the_function_and_the_new_tokens_learn(tmp_path, normalization):
    source, model = source_checkpoint(tmp_path, small(normalization=normalization))
    grow(tmp_path / "src", tmp_path / "grown", qkv=40, proj=24, ffn=96, init="preserve", log=lambda _: None)
    grown = ConsolidatedCheckpoint(tmp_path / "grown")
    assert grown.cfg.model.qkv_tokens == 40 and grown.cfg.model.qkv_scale_tokens == 16
    assert grown.cfg.model.proj_scale_tokens == 16 and grown.cfg.model.ffn_scale_tokens == 48
    from gigatron.checkpoint.reader import model_from_checkpoint

    bigger = model_from_checkpoint(grown).train()
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(bigger(ids), model(ids), rtol=1e-6, atol=1e-6)
    new_keys = bigger[1].attn.q.key_tokens[16:]
    assert torch.count_nonzero(new_keys) == 0
    optimizer = torch.optim.AdamW(bigger.parameters(), lr=1e-2)
    for _ in range(3):
        logits = bigger(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.count_nonzero(bigger[1].attn.q.key_tokens[16:]) > 0  # zero keys get gradient


def test_random_growth_rescales_and_changes_the_function(tmp_path):
    source, _ = source_checkpoint(tmp_path, small())
    grown = GrownCheckpoint(source, small(qkv_tokens=32), init="random", seed=0)
    assert grown.cfg.model.qkv_scale_tokens is None  # √n_new
    new_keys = grown.tensor("1.attn.q.key_tokens")[16:]
    assert float(new_keys.std()) == pytest.approx(0.02, rel=0.3)
    assert torch.equal(grown.tensor("1.attn.q.key_tokens")[:16], source.tensor("1.attn.q.key_tokens"))


def test_moments_of_new_tokens_start_at_zero_and_old_ones_are_kept_or_reset():
    class WithMoments:
        def __init__(self, inner):
            self.inner = inner
            self.cfg, self.path, self.plans = inner.cfg, inner.path, inner.plans
            self.trainer_state, self.rng, self.layout = inner.trainer_state, None, {}
            self.has_optimizer, self.optimizer_step = True, 7

        def tensor(self, name, key=None):
            value = self.inner.tensor(name)
            return value if key is None else torch.full_like(value, 0.5)

    cfg = config_from_dict({"model": {"family": "tokenformer", **dataclasses.asdict(small())}})
    model = build_model(cfg.model, LayerFactory())
    source = WithMoments(InMemoryCheckpoint("mem", cfg, {n: p.detach() for n, p in model.named_parameters()}))
    keep = GrownCheckpoint(source, small(ffn_tokens=64), optimizer="keep")
    moment = keep.tensor("1.ffn.value_tokens", "exp_avg")
    assert torch.all(moment[:48] == 0.5) and torch.all(moment[48:] == 0)
    reset = GrownCheckpoint(source, small(ffn_tokens=64), optimizer="reset")
    assert torch.count_nonzero(reset.tensor("1.ffn.value_tokens", "exp_avg")) == 0
    assert keep.optimizer_step == 7


@pytest.mark.parametrize(("change", "message"), [
    (dict(hidden_size=64), "model.hidden_size differs"),
    (dict(num_layers=3), "model.num_layers differs"),
    (dict(qkv_tokens=8), "model.qkv_tokens=8 is smaller"),
])
def test_impossible_growth_says_why(tmp_path, change, message):
    source, _ = source_checkpoint(tmp_path, small())
    with pytest.raises(GrowthError, match=message):
        GrownCheckpoint(source, small(**change))


def test_preserving_growth_refuses_softmax(tmp_path):
    source, _ = source_checkpoint(tmp_path, small(normalization="softmax_n"))
    with pytest.raises(GrowthError, match="exp\\(0\\) = 1"):
        GrownCheckpoint(source, small(normalization="softmax_n", qkv_tokens=32), init="preserve")
