"""Family gpt <-> transformers' LlamaForCausalLM."""

from __future__ import annotations

from typing import Any

from gigatron.models.gpt.config import GPTConfig
from gigatron.models.hf_adapter import HFAdapter, NamePairs, lm_end_names, require, uniform_ffn_size

_LLAMA_NAMES = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
                "attn.o": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
                "mlp.down": "mlp.down_proj", "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


def to_llama(cfg: GPTConfig, token_ids: dict[str, int | None]) -> tuple[Any, NamePairs]:
    from transformers import LlamaConfig

    hf = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=uniform_ffn_size(cfg),
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},  # transformers 5's rope_theta
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        max_position_embeddings=8192, **token_ids,
    )
    names = lm_end_names(cfg.num_layers + 1, "model.embed_tokens.weight", "model.norm.weight", cfg.tie_embeddings)
    for i in range(cfg.num_layers):
        names += [(f"model.layers.{i}.{theirs}.weight", f"{i + 1}.{ours}.weight") for ours, theirs in _LLAMA_NAMES.items()]
    return hf, names


def from_llama(hf: Any) -> dict[str, Any]:
    require(hf, "attention_bias", not hf.attention_bias, "false")
    require(hf, "mlp_bias", not getattr(hf, "mlp_bias", False), "false")
    require(hf, "hidden_act", hf.hidden_act == "silu", "silu")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    require(hf, "head_dim", head_dim * hf.num_attention_heads == hf.hidden_size, "hidden_size / num_attention_heads")
    rope = getattr(hf, "rope_parameters", None) or {"rope_type": "default", "rope_theta": getattr(hf, "rope_theta", 1e4)}
    require(hf, "rope_parameters", rope.get("rope_type", "default") == "default", "rope_type=default (no scaling)")
    return {"family": "gpt", "vocab_size": hf.vocab_size, "hidden_size": hf.hidden_size,
            "num_layers": hf.num_hidden_layers, "num_heads": hf.num_attention_heads,
            "num_kv_heads": hf.num_key_value_heads, "ffn_hidden_size": hf.intermediate_size,
            "rope_base": float(rope["rope_theta"]), "norm_eps": hf.rms_norm_eps,
            "tie_embeddings": bool(hf.tie_word_embeddings)}


ADAPTER = HFAdapter("llama", to_llama, from_llama)
