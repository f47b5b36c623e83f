"""Context-parallel building blocks on one process: the sequence layouts, the blockwise attention
(PyTorch's flash kernel path and the reference loop) against naive attention, and config checks."""

from __future__ import annotations

import math

import pytest
import torch

import gigatron.models.layers.blockwise_attention as blockwise
from gigatron.config import ConfigError, config_from_dict, validate_config
from gigatron.models.layers.blockwise_attention import memory_efficient_attention
from gigatron.models.layers.cp.layout import SequenceLayout, pad_to_multiple


def naive(q, k, v, causal, q_pos, k_pos, key_limit=None):
    h = q.shape[1]
    k, v = k.repeat_interleave(h // k.shape[1], 1), v.repeat_interleave(h // v.shape[1], 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = torch.ones(len(q_pos), len(k_pos), dtype=torch.bool)
    if causal:
        allowed &= k_pos[None] <= q_pos[:, None]
    if key_limit is not None:
        allowed &= (k_pos < key_limit)[None]
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0) @ v


def test_zigzag_layout_gives_rank_r_chunks_r_and_2cp_minus_1_minus_r():
    layout = SequenceLayout(rank=1, size=3, zigzag=True)
    assert layout.positions(12).tolist() == [2, 3, 8, 9]
    assert SequenceLayout(1, 3, zigzag=False).positions(12).tolist() == [4, 5, 6, 7]
    x = torch.arange(24).view(2, 12)
    pieces = [SequenceLayout(r, 3).shard(x, dim=1) for r in range(3)]
    assert torch.equal(layout.unshard(pieces, dim=1), x)
    with pytest.raises(ValueError, match=r"sequence length 10 is not divisible by 2·cp \(zigzag\) = 6"):
        layout.positions(10)
    padded, length = pad_to_multiple(torch.ones(1, 10), 6)
    assert padded.shape == (1, 12) and length == 10 and padded[0, 10:].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["flash-kernel", "reference-loop"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("key_limit", [None, 17])
def test_blockwise_attention_equals_naive(dtype, causal, key_limit, monkeypatch):
    monkeypatch.setattr(blockwise, "_SCORE_BUDGET", 200)  # many row blocks in the reference loop
    monkeypatch.setattr(blockwise, "_MAX_RUN", 5)  # runs cut into pieces: diagonal, full and masked pairs
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 24, 8, generator=generator, dtype=dtype, requires_grad=True)
    k = torch.randn(2, 2, 24, 8, generator=generator, dtype=dtype, requires_grad=True)
    v = torch.randn(2, 2, 24, 8, generator=generator, dtype=dtype, requires_grad=True)
    zigzag = SequenceLayout(0, 2).positions(24).tolist() + SequenceLayout(1, 2).positions(24).tolist()
    for positions in (torch.arange(24), torch.tensor(zigzag)):
        out = memory_efficient_attention(q, k, v, causal=causal, q_pos=positions, k_pos=positions, key_limit=key_limit)
        ref = naive(q.double(), k.double(), v.double(), causal, positions, positions, key_limit)
        weights = torch.randn(out.shape, generator=generator, dtype=torch.float64)
        grads = torch.autograd.grad((out.double() * weights).sum(), (q, k, v))
        ref_grads = torch.autograd.grad((ref * weights).sum(), (q, k, v))
        assert float((out.double() - ref).abs().max()) < 1e-5
        assert max(float((a.double() - b.double()).abs().max()) for a, b in zip(grads, ref_grads, strict=True)) < 1e-4


def test_a_fused_kernel_is_used_only_after_it_matches_the_reference_loop(monkeypatch):
    monkeypatch.setattr(blockwise, "_verified", {})
    cpu = torch.device("cpu")
    assert blockwise._fused_mismatch(cpu, torch.float32) is None
    assert blockwise._fused_verified(cpu, torch.float32)
    # a kernel that returns a wrong log-sum-exp is refused with the reason, and attention stays exact
    monkeypatch.setattr(blockwise, "_verified", {})
    real = blockwise._fused_forward
    monkeypatch.setattr(blockwise, "_fused_forward", lambda *a: (real(*a)[0], real(*a)[1] + 0.1))
    with pytest.warns(UserWarning, match=r"fused kernel on cpu torch.float32 disagrees .*lse: relative error"):
        assert not blockwise._fused_verified(cpu, torch.float32)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=generator) for _ in range(3))
    out = memory_efficient_attention(q, k, v, causal=True)
    assert float((out - naive(q, k, v, True, torch.arange(16), torch.arange(16))).abs().max()) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA fused attention kernel needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_fused_blockwise_attention_equals_the_reference_loop(dtype, monkeypatch):
    monkeypatch.setattr(blockwise, "_verified", {})
    cuda = torch.device("cuda")
    assert blockwise._fused_mismatch(cuda, dtype) is None  # the kernel really is used, not the fallback
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 1000, 64, generator=generator).to(cuda, dtype).requires_grad_()
    k = torch.randn(2, 2, 1000, 64, generator=generator).to(cuda, dtype).requires_grad_()
    v = torch.randn(2, 2, 1000, 64, generator=generator).to(cuda, dtype).requires_grad_()
    out = memory_efficient_attention(q, k, v, causal=True)
    ref = naive(q.double().cpu(), k.double().cpu(), v.double().cpu(), True, torch.arange(1000), torch.arange(1000))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert float((out.double().cpu() - ref).abs().max()) < tol


BASE = {"model": {"family": "gpt", "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "num_layers": 2},
        "train": {"steps": 1}, "data": {"seq_len": 128}}


def _errors(world: int, **sections) -> str:
    raw = {key: dict(value) for key, value in BASE.items()}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    with pytest.raises(ConfigError) as info:
        validate_config(config_from_dict(raw), world_size=world)
    return str(info.value)


@pytest.mark.parametrize(("world", "sections", "expected"), [
    (4, {"parallel": {"cp": 4}, "data": {"seq_len": 100}}, "data.seq_len=100 is not divisible by 8 (2·parallel.cp"),
    (4, {"parallel": {"cp": 4, "cp_attention": "hybrid", "cp_ulysses": 4}}, "parallel.cp_ulysses"),
    (2, {"parallel": {"cp": 2, "cp_ulysses": 2}}, "only applies to parallel.cp_attention=hybrid"),
    (4, {"parallel": {"cp": 4, "cp_attention": "ulysses"}}, "splits the attention heads per TP rank"),
    (4, {"parallel": {"cp": 2, "pp": 2}}, "not combined with the pipeline engine"),
    (2, {"parallel": {"cp": 2}, "model": {"family": "mamba", "hidden_size": 64, "num_layers": 2}},
     "model.mixer=mamba1"),
    (4, {"parallel": {"cp": 4}, "model": {"family": "hybrid", "hidden_size": 64, "num_layers": 2, "pattern": "M*",
                                         "headdim": 32, "ngroups": 1, "num_heads": 4}},
     "1/cp share of every TP rank's Mamba-2 heads"),
])
def test_bad_context_parallel_configs_are_named(world, sections, expected):
    assert expected in _errors(world, **sections)


@pytest.mark.parametrize(("config", "world", "seq_len"), [
    ("smoke.yaml", 2, 2048), ("gpt-8b-32k.yaml", 64, 32768), ("hybrid-8b-128k.yaml", 32, 131072),
    ("gpt-1b-1m.yaml", 64, 1 << 20),
])
def test_long_context_configs_validate_at_their_world_size(config, world, seq_len):
    from gigatron.config import load_config
    from tests.conftest import REPO

    cfg = validate_config(load_config(REPO / "configs" / "longctx" / config), world_size=world)
    assert cfg.parallel.cp > 1 and cfg.data.seq_len == seq_len
