"""MatFormer on one process: nested FFNs against a hand-sliced reference, config checks, the step
schedule, Mix'n'Match against brute force, extraction, and speculative decoding."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint, InMemoryCheckpoint, write_consolidated
from gigatron.config import ConfigError, config_from_dict, validate_config
from gigatron.inference.generation import generate
from gigatron.inference.matformer_extract import ExtractedCheckpoint, verify_extraction
from gigatron.inference.mixnmatch import SizeModel, choose, proposals
from gigatron.inference.speculative import speculative_generate
from gigatron.models.gpt.config import GPTConfig
from gigatron.models.hybrid.config import HybridConfig
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.layers.nested_ffn import MatFormerConfig, ffn_granularity, submodel_config
from gigatron.models.registry import build_model, get_model_spec
from gigatron.objectives.matformer import GranularitySchedule


def gpt(**overrides) -> GPTConfig:
    base = dict(vocab_size=67, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, ffn_hidden_size=64,
                init_std=0.2, matformer=MatFormerConfig(blocks=2))
    base.update(overrides)
    return GPTConfig(**base)


def hybrid(**overrides) -> HybridConfig:
    base = dict(vocab_size=67, hidden_size=32, num_layers=6, pattern="M-M*--", d_state=8, headdim=8, chunk_size=4,
                num_heads=4, num_kv_heads=2, ffn_hidden_size=64, init_std=0.2, matformer=MatFormerConfig())
    base.update(overrides)
    return HybridConfig(**base)


def built(cfg, seed: int = 5):
    model = build_model(cfg, LayerFactory())
    initialize_parameters(model, seed=seed)
    return model.eval()


@pytest.mark.parametrize("activation", ["swiglu", "relu2"])
@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_nested_ffn_equals_a_hand_sliced_ffn(activation, blocks):
    cfg = hybrid(mlp_activation=activation, matformer=MatFormerConfig(blocks=blocks))
    mlp = built(cfg)[2].mixer
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    for g in (0.125, 0.25, 0.5, 1.0):
        # The definition: the first g·64/blocks neurons of each of the `blocks` contiguous blocks.
        block = 64 // blocks
        keep = [b * block + i for b in range(blocks) for i in range(int(g * block))]
        up, down = mlp.up.weight[keep], mlp.down.weight[:, keep]
        if activation == "swiglu":
            expected = (F.silu(x @ mlp.gate.weight[keep].T) * (x @ up.T)) @ down.T
        else:
            expected = torch.relu(x @ up.T).square() @ down.T
        mlp.nesting.set_fraction(g)
        assert torch.allclose(mlp(x), expected, atol=1e-6), (g, blocks)


def test_full_granularity_is_the_ordinary_model():
    ids = torch.randint(0, 67, (2, 9), generator=torch.Generator().manual_seed(1))
    for cfg in (gpt(), hybrid()):
        plain = built(submodel_config(cfg, 1.0))
        nested = built(cfg)
        assert torch.equal(nested(ids), plain(ids))
        with ffn_granularity(nested, 0.25):
            smaller = nested(ids)
        assert not torch.allclose(smaller, plain(ids))
        assert torch.equal(nested(ids), plain(ids))  # the context restored the full width


@pytest.mark.parametrize("cfg", [gpt(ffn_hidden_sizes=[16, 32, 64], matformer=None),
                                 hybrid(ffn_hidden_sizes=[16, 64, 32], matformer=None, mlp_activation="swiglu")])
def test_per_layer_ffn_sizes_build_and_count(cfg):
    model = build_model(cfg, LayerFactory())
    assert sum(p.numel() for p in model.parameters()) == get_model_spec(type(cfg).family).num_params(cfg)
    mlps = [m for m in model.modules() if hasattr(m, "down")]
    assert [m.down.weight.shape[1] for m in mlps] == cfg.ffn_hidden_sizes


def _problems(model: dict, **sections) -> str:
    cfg = config_from_dict({"model": model, "train": {"steps": 1, **sections.pop("train", {})}, **sections})
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, world_size=sections.get("world", 2))
    return str(info.value)


BASE = {"family": "gpt", "hidden_size": 32, "num_heads": 4, "ffn_hidden_size": 64, "num_layers": 2}


@pytest.mark.parametrize(("model", "sections", "expected"), [
    ({**BASE, "matformer": {"blocks": 1}}, {"parallel": {"tp": 2}},
     "model.matformer.blocks=1 is not divisible by parallel.tp=2"),
    ({**BASE, "matformer": {"granularities": [0.25, 0.5]}}, {}, "including 1"),
    ({**BASE, "matformer": {"granularities": [0.1, 1.0]}}, {}, "do not give whole neurons"),
    ({**BASE, "ffn_hidden_sizes": [64]}, {}, "model.ffn_hidden_sizes has 1 entries but the model has 2"),
    ({**BASE, "ffn_hidden_sizes": [64, 64], "matformer": {}}, {}, "exclusive"),
    ({**BASE, "matformer": {}}, {"parallel": {"zero_stage": 3}}, "ZeRO-3"),
    ({**BASE, "matformer": {}}, {"parallel": {"pp": 2}}, "matformer.mode=sum with parallel.pp>1"),
    ({**BASE, "matformer": {}}, {"matformer": {"weights": [1, 1]}}, "matformer.weights=[1.0, 1.0] needs 4"),
    ({**BASE, "matformer": {}}, {"matformer": {"probabilities": [0.5, 0.5, 0.5, 0.5]}}, "sums to 2.0"),
    (BASE, {"matformer": {"weights": [1.0]}}, "no model.matformer section"),
])
def test_bad_matformer_configs_are_named(model, sections, expected):
    assert expected in _problems(model, **sections)


def _cfg(**matformer):
    return config_from_dict({"model": {**BASE, "matformer": {}}, "train": {"steps": 1}, "matformer": matformer})


def test_sum_mode_trains_every_granularity_with_normalised_weights():
    plan = GranularitySchedule(_cfg(weights=[1, 1, 2, 4])).at(7)
    assert plan == [(0.125, 0.125), (0.25, 0.125), (0.5, 0.25), (1.0, 0.5)]


def test_sample_mode_is_deterministic_and_follows_the_probabilities():
    schedule = GranularitySchedule(_cfg(mode="sample", probabilities=[0.1, 0.2, 0.3, 0.4]))
    draws = [schedule.at(step)[0][0] for step in range(4000)]
    assert draws == [schedule.at(step)[0][0] for step in range(4000)]
    for g, p in zip((0.125, 0.25, 0.5, 1.0), (0.1, 0.2, 0.3, 0.4), strict=True):
        share = draws.count(g) / len(draws)
        assert abs(share - p) < 4 * (p * (1 - p) / len(draws)) ** 0.5, (g, share)


def test_mixnmatch_proposals_equal_a_brute_force_search():
    cfg = gpt(num_layers=5, matformer=MatFormerConfig())
    sizes, levels = SizeModel(cfg), sorted(cfg.matformer.granularities)
    spec = get_model_spec("gpt")
    for target in (spec.num_params(submodel_config(cfg, 0.25)) + 3000, spec.num_params(submodel_config(cfg, 0.5)) + 9000):
        best: dict[int, tuple] = {}
        for seq in itertools.product(range(len(levels)), repeat=5):
            steps = [b - a for a, b in itertools.pairwise(seq)]
            if any(s not in (0, 1) for s in steps):
                continue  # not a staircase through consecutive levels
            fractions = [levels[k] for k in seq]
            params = spec.num_params(submodel_config(cfg, fractions))
            assert params == sizes.params(seq)
            if params > target:
                continue
            runs = [len(list(g)) for _, g in itertools.groupby(seq)]
            key = (params, -(max(runs) - min(runs)))
            span = seq[-1] - seq[0]
            if span not in best or key > best[span][0]:
                best[span] = (key, tuple(fractions))
        ours = proposals(cfg, target)
        assert {c.span: ((c.params, -c.unevenness), c.fractions) for c in ours} == best
        chosen, considered = choose(cfg, target, tolerance=0.02)
        assert chosen in considered and chosen.params <= target
        assert all(a <= b for a, b in itertools.pairwise(chosen.fractions))
        close = [c for c in considered if c.params >= 0.98 * target]
        if close:  # the smallest slope that meets the target
            assert chosen.span == min(c.span for c in close)
        else:  # none does: the closest from below
            assert chosen.params == max(c.params for c in considered)


def test_mixnmatch_target_below_the_smallest_submodel_is_refused():
    with pytest.raises(ValueError, match="below the smallest submodel"):
        choose(gpt(), 1000)


@pytest.mark.parametrize("cfg", [gpt(), hybrid(), hybrid(mlp_activation="swiglu", matformer=MatFormerConfig(blocks=4))],
                         ids=["gpt-blocks2", "hybrid-relu2", "hybrid-swiglu-blocks4"])
@pytest.mark.parametrize("widths", [0.25, "mixed"])
def test_extracted_model_computes_the_nested_submodel(cfg, widths, tmp_path: Path):
    model = built(cfg)
    source = InMemoryCheckpoint(tmp_path / "src", config_from_dict({"model": _as_dict(cfg), "train": {"steps": 1}}),
                                {n: p.detach().clone() for n, p in model.named_parameters()})
    layers = len(cfg.ffn_sizes)
    fractions = 0.25 if widths == 0.25 else [[0.125, 0.5, 1.0][i % 3] for i in range(layers)]
    view = ExtractedCheckpoint(source, fractions)
    write_consolidated(view, tmp_path / "out", log=lambda *_: None)
    result = ConsolidatedCheckpoint(tmp_path / "out")
    assert result.cfg.model.matformer is None
    assert result.cfg.model.ffn_hidden_sizes == [len(range(int(f * 64))) for f in view.fractions]
    assert verify_extraction(source, result, view.fractions, tolerance=1e-6) <= 1e-6


def _as_dict(cfg) -> dict:
    import dataclasses

    return {"family": type(cfg).family, **dataclasses.asdict(cfg)}


@pytest.mark.parametrize("cfg", [gpt(num_layers=2), hybrid()], ids=["gpt", "hybrid"])
@pytest.mark.parametrize("draft", [0.125, 0.5, 1.0])
def test_speculative_decoding_gives_the_full_models_greedy_tokens(cfg, draft):
    model = built(cfg, seed=11)
    total_accepted = 0
    for prompt in ([1, 7, 3], [5], [9, 9, 9, 2, 4, 1, 60], [33, 12]):
        for k in (1, 3, 5):
            expected = generate(model, prompt, 17, temperature=0)
            got, stats = speculative_generate(model, prompt, 17, draft_granularity=draft, draft_tokens=k)
            assert got == expected, (prompt, k)
            assert stats.target_passes < 17 or stats.accepted == 0
            total_accepted += stats.accepted
            if draft == 1.0:  # the draft is the full model: every drafted token passes
                assert stats.acceptance_rate == 1.0
    assert total_accepted > 0


@pytest.mark.parametrize("draft, k", [(0.125, 2), (1.0, 1)])
def test_speculative_sampling_draws_from_the_full_models_distribution(draft, k):
    """Leviathan et al.'s rule: the joint law of the first 3 sampled tokens equals the full model's,
    enumerated exactly (vocabulary 4: 64 outcomes; chi-square over 3,000 runs)."""
    from scipy.stats import chisquare

    from gigatron.inference.cached import forward_cached, new_caches
    from gigatron.inference.speculative import distribution

    model = built(gpt(vocab_size=4, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, ffn_hidden_size=32,
                      init_std=0.6), seed=3)
    prompt, temperature = [1, 3], 1.3

    def conditional(prefix: list[int]) -> torch.Tensor:
        caches = new_caches(model, 1, 8, "cpu", torch.float32)
        return distribution(forward_cached(model, torch.tensor([prefix]), caches)[0, -1], temperature, None)

    expected = torch.zeros(4, 4, 4, dtype=torch.float64)
    p1 = conditional(prompt)
    for a in range(4):
        p2 = conditional(prompt + [a])
        for b in range(4):
            expected[a, b] = p1[a] * p2[b] * conditional(prompt + [a, b])
    counts = torch.zeros(4, 4, 4)
    accepted = drafted = 0
    runs = 3000
    for seed in range(runs):
        tokens, stats = speculative_generate(model, prompt, 3, draft_granularity=draft, draft_tokens=k,
                                             temperature=temperature, seed=seed)
        counts[tuple(tokens)] += 1
        accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
    if draft == 1.0:
        assert accepted == drafted  # p == q: every draft passes
    else:
        assert 0.2 < accepted / drafted < 0.95, accepted / drafted  # rejections happen, so the residual is drawn
    _, p_value = chisquare(counts.flatten().numpy(), (expected.flatten() * runs).numpy())
    assert p_value > 1e-3, p_value


def test_speculative_decoding_stops_at_eos():
    model = built(gpt(), seed=11)
    plain = generate(model, [1, 2], 12, temperature=0)
    eos = plain[4]
    got, _ = speculative_generate(model, [1, 2], 12, draft_granularity=1.0, draft_tokens=3, eos_id=eos)
    assert got == plain[:plain.index(eos) + 1]
