"""The chunked output layer + cross-entropy (train.loss_chunk_tokens) against the plain path: the same
loss and gradients, in a fraction of the memory; wired through the LM objective for every LM family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gigatron.config import ConfigError, config_from_dict, validate_config
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.layers.linear_cross_entropy import chunked_linear_cross_entropy
from gigatron.models.registry import build_model, get_model_spec
from gigatron.objectives import build_task
from gigatron.objectives.lm import find_head
from gigatron.planning.measure import LiveTensorBytes


def _problem(tokens: int, hidden: int, vocab: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    weight = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).to(dtype)
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    keep = torch.rand(tokens, generator=g) > 0.2  # some tokens unlabelled
    return x, weight, labels, keep.float() / keep.sum()


def _plain(x, weight, labels, token_weights):
    per_token = F.cross_entropy(F.linear(x, weight).to(torch.promote_types(x.dtype, torch.float32)), labels,
                                reduction="none")
    return (per_token * token_weights).sum()


def _loss_and_grads(fn, x, weight, labels, token_weights):
    x, weight = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    loss = fn(x, weight, labels, token_weights)
    (loss * 0.37).backward()  # a scaled loss, as gradient accumulation and MatFormer weights give
    return loss.detach(), x.grad, weight.grad


@pytest.mark.parametrize("chunk", [1, 7, 64, 100, 1000])
def test_equals_plain_cross_entropy_in_fp64(chunk):
    problem = _problem(100, 16, 50, torch.float64)
    ours = _loss_and_grads(lambda *a: chunked_linear_cross_entropy(*a, chunk=chunk), *problem)
    plain = _loss_and_grads(_plain, *problem)
    for a, b in zip(ours, plain, strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-12, atol=1e-14)


def test_equals_plain_cross_entropy_in_fp32_and_bf16():
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        problem = _problem(96, 32, 300, dtype, seed=3)
        ours = _loss_and_grads(lambda *a: chunked_linear_cross_entropy(*a, chunk=40), *problem)
        plain = _loss_and_grads(_plain, *problem)
        assert ours[1].dtype == ours[2].dtype == dtype
        for a, b in zip(ours, plain, strict=True):
            torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * 1e-2)


def test_without_gradients_only_the_loss_is_computed():
    problem = _problem(30, 8, 20, torch.float32)
    with torch.no_grad(), LiveTensorBytes() as live:
        loss = chunked_linear_cross_entropy(*problem, chunk=10)
    torch.testing.assert_close(loss, _plain(*problem))
    assert live.peak < 20 * 10 * 4 * 3  # one chunk's logits and a few per-token vectors, no gradient buffers


def test_peak_memory_holds_one_chunk_of_logits():
    tokens, hidden, vocab, chunk = 1024, 32, 8192, 128
    peaks = {}
    for name, fn in (("plain", _plain),
                     ("chunked", lambda *a: chunked_linear_cross_entropy(*a, chunk=chunk))):
        x, weight, labels, token_weights = _problem(tokens, hidden, vocab, torch.float32)
        x.requires_grad_(True)
        weight.requires_grad_(True)
        with LiveTensorBytes() as live:
            fn(x, weight, labels, token_weights).backward()
        peaks[name] = live.peak
    logits = tokens * vocab * 4
    assert peaks["plain"] >= 2 * logits  # the logits and their gradient (softmax) at least
    # One chunk's worth of logits, the weight gradient (the plain path makes it too) and the input
    # gradient with its fp32 sum.
    assert peaks["chunked"] <= chunk * vocab * 4 + vocab * hidden * 4 + 2 * tokens * hidden * 4 + 65536, peaks
    assert peaks["chunked"] * 8 < peaks["plain"]


def test_chunk_must_be_positive():
    with pytest.raises(ValueError, match="chunk=0"):
        chunked_linear_cross_entropy(*_problem(4, 4, 4, torch.float32), chunk=0)


LM_MODELS = {
    "gpt": {"family": "gpt", "vocab_size": 97, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
            "ffn_hidden_size": 64},
    "gpt-tied": {"family": "gpt", "vocab_size": 97, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
                 "ffn_hidden_size": 64, "tie_embeddings": True},
    "hybrid": {"family": "hybrid", "vocab_size": 97, "hidden_size": 32, "num_layers": 3, "num_heads": 4,
               "pattern": "M*-", "ffn_hidden_size": 64, "d_state": 8, "headdim": 8, "chunk_size": 4},
    "mamba": {"family": "mamba", "vocab_size": 97, "hidden_size": 32, "num_layers": 2, "d_state": 8},
    "tokenformer": {"family": "tokenformer", "vocab_size": 97, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
                    "qkv_tokens": 32, "proj_tokens": 32, "ffn_tokens": 64, "final_norm": "layernorm"},
}


def _trained_grads(model_cfg: dict, chunk: int, matformer: bool = False):
    sections = {"model": model_cfg, "train": {"steps": 1, "loss_chunk_tokens": chunk}, "data": {"seq_len": 12}}
    if matformer:
        sections["model"] = {**model_cfg, "matformer": {"granularities": [0.5, 1.0]}}
    cfg = config_from_dict(sections)
    factory = LayerFactory()
    model = build_model(cfg.model, factory)
    initialize_parameters(model, seed=5)
    task = build_task(get_model_spec(type(cfg.model).family).task, factory, cfg)
    batch = torch.randint(0, cfg.model.vocab_size, (3, 13), generator=torch.Generator().manual_seed(1))
    batch[1, 5:] = -1  # a skipped sample's tail: unlabelled
    if matformer:
        from gigatron.models.layers.nested_ffn import ffn_granularity

        loss = 0.0
        for g, w in ((0.5, 0.25), (1.0, 0.75)):
            with ffn_granularity(model, g):
                loss = loss + w * task.forward_loss(model, batch)
    else:
        loss = task.forward_loss(model, batch)
    loss.backward()
    # The head gives logits again to anyone else (generation, evaluation tools).
    logits = model(batch[:, :-1].clamp(min=0))
    assert logits.shape[-1] == cfg.model.vocab_size
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("family", list(LM_MODELS))
def test_every_lm_family_trains_the_same_with_the_chunked_loss(family):
    plain_loss, plain_grads = _trained_grads(LM_MODELS[family], 0)
    chunked_loss, chunked_grads = _trained_grads(LM_MODELS[family], 5)
    torch.testing.assert_close(chunked_loss, plain_loss, rtol=1e-6, atol=0)
    assert chunked_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_matformer_granularities_train_the_same_with_the_chunked_loss():
    plain_loss, plain_grads = _trained_grads(LM_MODELS["gpt"], 0, matformer=True)
    chunked_loss, chunked_grads = _trained_grads(LM_MODELS["gpt"], 7, matformer=True)
    torch.testing.assert_close(chunked_loss, plain_loss, rtol=1e-6, atol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_find_head_names_the_model_without_one():
    with pytest.raises(ValueError, match="lm_ends.Head"):
        find_head(torch.nn.Linear(2, 2))


def test_config_refuses_negative_chunks_and_families_without_a_vocabulary():
    with pytest.raises(ConfigError, match="train.loss_chunk_tokens=-1 must be >= 0"):
        validate_config(config_from_dict({"model": LM_MODELS["gpt"], "train": {"steps": 1, "loss_chunk_tokens": -1}}),
                        world_size=1)
    zero3 = config_from_dict({"model": LM_MODELS["gpt"], "train": {"steps": 1, "loss_chunk_tokens": 8},
                              "parallel": {"zero_stage": 3}})
    with pytest.raises(ConfigError, match="does not combine with parallel.zero_stage=3"):
        validate_config(zero3, world_size=1)
    fit = config_from_dict({"model": {"family": "fit"}, "train": {"steps": 1, "loss_chunk_tokens": 64}})
    with pytest.raises(ConfigError, match="model.family=fit has no vocabulary output layer"):
        validate_config(fit, world_size=1)
