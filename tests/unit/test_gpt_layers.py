"""GPT building blocks against naive references, init determinism, and parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gigatron.config import load_config
from gigatron.models.gpt.config import GPTConfig
from gigatron.models.layers.attention import GroupedQueryAttention
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters, mark_init
from gigatron.models.layers.norms import RMSNorm
from gigatron.models.layers.rotary import apply_rotary, rotary_tables
from gigatron.models.registry import build_model, get_model_spec
from gigatron.pretrain.optimizer import global_grad_norm, param_groups
from tests.conftest import REPO


def test_rmsnorm_matches_definition() -> None:
    norm = RMSNorm(8, eps=1e-6)
    nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_rotary_matches_complex_rotation() -> None:
    seq, dim, base = 7, 8, 10000.0
    x = torch.randn(2, 3, seq, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cos, sin = rotary_tables(seq, dim, base)
    ours = apply_rotary(x, cos.double(), sin.double())
    # Reference: pair (i, i + dim/2) as a complex number rotated by position * base^(-2i/dim).
    half = dim // 2
    z = torch.complex(x[..., :half], x[..., half:])
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / dim)
    angle = torch.arange(seq, dtype=torch.float64)[:, None] * freqs
    rotated = z * torch.polar(torch.ones_like(angle), angle)
    # The tables are fp32 (as the model uses them), so agreement is to fp32 precision.
    torch.testing.assert_close(ours, torch.cat([rotated.real, rotated.imag], -1), rtol=1e-6, atol=1e-6)


def naive_attention(attn: GroupedQueryAttention, x: torch.Tensor) -> torch.Tensor:
    batch, seq, _ = x.shape
    h, kv, d = attn.local_heads, attn.local_kv_heads, attn.head_dim
    q = attn.q(x).view(batch, seq, h, d).transpose(1, 2)
    k = attn.k(x).view(batch, seq, kv, d).transpose(1, 2).repeat_interleave(h // kv, dim=1)
    v = attn.v(x).view(batch, seq, kv, d).transpose(1, 2).repeat_interleave(h // kv, dim=1)
    cos, sin = rotary_tables(seq, d, attn.rope_base)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1) @ v
    return attn.o(out.transpose(1, 2).reshape(batch, seq, h * d))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_grouped_query_attention_matches_naive_softmax(kv_heads: int) -> None:
    attn = GroupedQueryAttention(LayerFactory(), 32, 4, kv_heads, 8, 10000.0, std=0.2, out_std=0.2)
    initialize_parameters(attn, seed=0)
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(attn(x), naive_attention(attn, x), rtol=1e-5, atol=1e-5)


def test_attention_is_causal() -> None:
    attn = GroupedQueryAttention(LayerFactory(), 32, 4, 2, 8, 10000.0, std=0.2, out_std=0.2)
    initialize_parameters(attn, seed=0)
    x = torch.randn(1, 6, 32)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 32)
    torch.testing.assert_close(attn(x)[:, :4], attn(y)[:, :4])


def test_init_is_deterministic_by_name() -> None:
    cfg = GPTConfig(hidden_size=32, num_layers=2, num_heads=4, vocab_size=260)
    a, b = build_model(cfg, LayerFactory()), build_model(cfg, LayerFactory())
    initialize_parameters(a, seed=5)
    initialize_parameters(b, seed=5)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a[1].attn.q.weight, a[2].attn.q.weight)


def _holder(shape: tuple[int, ...], partition_dim: int | None = None) -> nn.Module:
    holder = nn.Module()
    holder.w = mark_init(nn.Parameter(torch.empty(shape)), "normal", 0.5)
    if partition_dim is not None:
        holder.w.tensor_model_parallel, holder.w.partition_dim = True, partition_dim
    return holder


@pytest.mark.parametrize("dim", [0, 1])
def test_tp_shards_are_slices_of_the_single_process_tensor(dim: int) -> None:
    full = _holder((6, 4))
    initialize_parameters(full, seed=3)
    for rank in range(2):
        shape = (3, 4) if dim == 0 else (6, 2)
        shard = _holder(shape, partition_dim=dim)
        initialize_parameters(shard, seed=3, tp_rank=rank, tp_size=2)
        assert torch.equal(shard.w, full.w.chunk(2, dim=dim)[rank])


def test_unmarked_parameters_are_refused() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="no init rule"):
        initialize_parameters(model, seed=0)


@pytest.mark.parametrize("tie", [False, True])
def test_built_parameter_count_matches_formula(tie: bool) -> None:
    cfg = GPTConfig(hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, vocab_size=260, tie_embeddings=tie)
    model = build_model(cfg, LayerFactory())
    assert sum(p.numel() for p in model.parameters()) == get_model_spec("gpt").num_params(cfg)


def test_8b_config_builds_on_meta_with_llama3_8b_parameter_count() -> None:
    cfg = load_config(REPO / "configs" / "gpt" / "8b.yaml").model
    model = build_model(cfg, LayerFactory(device="meta"))
    built = sum(p.numel() for p in model.parameters())
    assert all(p.device.type == "meta" for p in model.parameters())
    assert built == get_model_spec("gpt").num_params(cfg)
    assert built == 8_030_261_248  # Llama-3-8B's published parameter count


def test_weight_decay_groups_exclude_norms_and_biases() -> None:
    model = nn.Sequential(nn.Linear(4, 4), RMSNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 2 and no_decay["weight_decay"] == 0.0


def test_global_grad_norm_matches_torch_on_one_process() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model(torch.randn(5, 4)).square().sum().backward()
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    torch.testing.assert_close(global_grad_norm(model.parameters(), tp_rank=0), expected)


def test_flops_per_token_counts_matmuls_and_attention() -> None:
    cfg = GPTConfig(hidden_size=64, num_layers=2, num_heads=4, vocab_size=260)
    spec = get_model_spec("gpt")
    non_embedding = spec.num_params(cfg) - 260 * 64
    assert spec.flops_per_token(cfg, 128) == 6 * non_embedding + 12 * 2 * 128 * 64
