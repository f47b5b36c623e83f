"""configs/tokenformer's paper sizes against the TokenFormer authors' released configs, field by field.

The values below are copied from github.com/Haiyang-W/TokenFormer: configs/tokenformer/
{150M,450M,900M,1-5B}_train_pile.yml and configs/incremental_scaling_openwebtext2/
{354M_train_openwebtext2_basemodel,354M_to_757M_train_openwebtext2_60k}.yml (the names they use:
num_layers, hidden_size, num_attention_heads, qkv/proj/ffn_slot_num, seq_length, train batch =
micro x accumulation x GPUs, train_iters, warmup as a fraction). The parameter count is the
authors' architecture counted here by hand: a tied 50,304-row embedding, per layer 2h(3q + p + f)
key and value tokens, and the final LayerNorm's scale and bias (2h). The paper names the sizes
150M, 450M, 900M and 1.5B; the 1.5B model has 1.587B parameters (+5.8 %).
"""

from __future__ import annotations

import pytest
import torch

from gigatron.config import load_config
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.registry import build_model, get_model_spec
from tests.conftest import REPO

VOCAB = 50304  # GPT-NeoX-20B's tokenizer (50,277) padded to a multiple of 128

#        config     layers hidden heads qkv   proj  ffn   seq   batch steps   warmup gpus micro parameters
PAPER = {
    "150m":      (12,  768,  12,   768,  768,  3072, 2048, 1024, 143000, 1430, 8,  32, 151_881_216),
    "450m":      (24,  1024, 16,   1024, 1024, 4096, 2048, 1024, 143000, 1430, 16, 16, 454_166_528),
    "900m":      (32,  1280, 16,   1280, 1280, 5120, 2048, 1024, 143000, 1430, 32, 8,  903_252_480),
    "1.5b":      (40,  1536, 16,   1536, 1536, 6144, 2048, 1024, 143000, 1430, 64, 8,  1_587_219_456),
    "grow-354m": (24,  1024, 16,   768,  768,  3072, 1024, 512,  600000, 6000, 16, 16, 353_503_232),
    "grow-757m": (24,  1024, 16,   1792, 1792, 7168, 1024, 512,  60000,  600,  64, 8,  756_156_416),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_matches_the_authors(name: str):
    layers, hidden, heads, qkv, proj, ffn, seq, batch, steps, warmup, gpus, micro, params = PAPER[name]
    cfg = load_config(REPO / "configs" / "tokenformer" / f"{name}.yaml")
    m, t = cfg.model, cfg.train
    assert (m.num_layers, m.hidden_size, m.num_heads) == (layers, hidden, heads)
    assert (m.qkv_tokens, m.proj_token_count, m.ffn_tokens) == (qkv, proj, ffn)
    assert (m.vocab_size, m.tie_embeddings, m.rotary_pct, m.normalization, m.final_norm, m.norm_eps) == (
        VOCAB, True, 0.25, "l2_norm_gelu", "layernorm", 1e-5)
    assert (cfg.data.seq_len, t.global_batch_size, t.steps, t.warmup_steps) == (seq, batch, steps, warmup)
    assert (cfg.hardware.gpus, t.micro_batch_size) == (gpus, micro)
    assert (t.lr, t.min_lr, t.schedule, t.weight_decay, tuple(t.betas), t.eps, t.clip_grad) == (
        6e-4, 6e-5, "cosine", 0.1, (0.9, 0.95), 1e-8, 1.0)
    assert (cfg.parallel.zero_stage, t.recompute) == (1, "full")
    # The Pattention and value initialisation the authors use ("normal" 0.02, "wang_init").
    assert m.key_init_std == 0.02 and m.value_init_std is None
    assert get_model_spec("tokenformer").num_params(m) == params
    if name.startswith("grow-757"):
        assert (cfg.grow.init, cfg.grow.schedule) == ("random", "restart")  # "pretrain_partial_init"


def test_the_built_model_has_the_counted_parameters():
    cfg = load_config(REPO / "configs" / "tokenformer" / "150m.yaml")
    with torch.device("meta"):
        model = build_model(cfg.model, LayerFactory(device="meta"))
    distinct = {id(p): p.numel() for p in model.parameters()}  # the tied embedding once
    assert sum(distinct.values()) == PAPER["150m"][-1]
