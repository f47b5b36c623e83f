"""Families hybrid <-> transformers' NemotronHForCausalLM and mamba2 <-> Mamba2ForCausalLM."""

from __future__ import annotations

from typing import Any

from gigatron.models.hf_adapter import (
    ExportError,
    HFAdapter,
    NamePairs,
    lm_end_names,
    mamba2_names,
    require,
    uniform_ffn_size,
)
from gigatron.models.hybrid.config import HybridConfig


def to_nemotron_h(cfg: HybridConfig, token_ids: dict[str, int | None]) -> tuple[Any, NamePairs]:
    from transformers import NemotronHConfig

    if cfg.mixer != "mamba2":
        raise ExportError("model.mixer=mamba1 has no Nemotron-H equivalent (it uses Mamba-2 layers)")
    if cfg.position_embedding != "none":
        raise ExportError("model.position_embedding=rope: Nemotron-H attention has no position embedding")
    if cfg.mlp_activation != "relu2":
        raise ExportError("model.mlp_activation=swiglu: Nemotron-H MLPs are squared-ReLU")
    pattern = cfg.layer_pattern
    hf = NemotronHConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, hybrid_override_pattern=pattern,
        tie_word_embeddings=False, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.kv_heads, head_dim=cfg.hidden_size // cfg.num_heads,
        intermediate_size=uniform_ffn_size(cfg),
        mlp_hidden_act="relu2", ssm_state_size=cfg.d_state, mamba_num_heads=cfg.expand * cfg.hidden_size // cfg.headdim,
        mamba_head_dim=cfg.headdim, n_groups=cfg.ngroups, conv_kernel=cfg.d_conv, expand=cfg.expand,
        chunk_size=cfg.chunk_size, layer_norm_epsilon=cfg.norm_eps,
        # Nemotron-H clamps dt at time_step_min; ours (like mamba_ssm's default) does not. A negligible
        # minimum keeps the forward identical (it is also used as a log in their init, so not 0).
        time_step_min=1e-12, time_step_limit=(1e-12, float("inf")), residual_in_fp32=False,
        # Spelled out (equal to today's defaults) so that a change of default cannot change the function.
        mamba_hidden_act="silu", use_bias=False, use_conv_bias=True, mamba_proj_bias=False, attention_bias=False,
        mlp_bias=False, attention_dropout=0.0, hidden_dropout=0.0, **token_ids,
    )
    names = lm_end_names(len(pattern) + 1, "model.embeddings.weight", "model.norm_f.weight", cfg.tie_embeddings)
    for i, symbol in enumerate(pattern):
        ours, theirs = f"{i + 1}", f"model.layers.{i}"
        names.append((f"{theirs}.norm.weight", f"{ours}.norm.weight"))
        if symbol == "M":
            names += mamba2_names(f"{theirs}.mixer", f"{ours}.mixer")
        elif symbol == "*":
            names += [(f"{theirs}.mixer.{n}_proj.weight", f"{ours}.mixer.{n}.weight") for n in "qkvo"]
        else:
            names += [(f"{theirs}.mixer.up_proj.weight", f"{ours}.mixer.up.weight"),
                      (f"{theirs}.mixer.down_proj.weight", f"{ours}.mixer.down.weight")]
    return hf, names


def to_mamba2(cfg: HybridConfig, token_ids: dict[str, int | None]) -> tuple[Any, NamePairs]:
    from transformers import Mamba2Config

    if cfg.mixer != "mamba2" or set(cfg.layer_pattern) != {"M"}:
        raise ExportError("Mamba2ForCausalLM needs a pure Mamba-2 model (model.family=mamba2)")
    hf = Mamba2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_heads=cfg.expand * cfg.hidden_size // cfg.headdim, head_dim=cfg.headdim, state_size=cfg.d_state,
        n_groups=cfg.ngroups, conv_kernel=cfg.d_conv, expand=cfg.expand, chunk_size=cfg.chunk_size,
        layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=False, use_bias=False, use_conv_bias=True,
        rms_norm=True, norm_before_gate=False, residual_in_fp32=False, time_step_limit=(0.0, float("inf")),
        hidden_act="silu", **token_ids,
    )
    names = lm_end_names(cfg.num_layers + 1, "backbone.embeddings.weight", "backbone.norm_f.weight", cfg.tie_embeddings)
    for i in range(cfg.num_layers):
        names.append((f"backbone.layers.{i}.norm.weight", f"{i + 1}.norm.weight"))
        names += mamba2_names(f"backbone.layers.{i}.mixer", f"{i + 1}.mixer")
    return hf, names


def _ssm_checks(hf: Any, heads: int, head_dim: int) -> None:
    require(hf, "use_bias", not hf.use_bias, "false")
    require(hf, "use_conv_bias", hf.use_conv_bias, "true")
    require(hf, "expand", heads * head_dim == hf.expand * hf.hidden_size, "num_heads * head_dim = expand * hidden_size")
    low, high = hf.time_step_limit
    require(hf, "time_step_limit", low <= 1e-6 and high == float("inf"), "(0, inf): our dt is not clamped")


def from_mamba2(hf: Any) -> dict[str, Any]:
    _ssm_checks(hf, hf.num_heads, hf.head_dim)
    require(hf, "rms_norm", hf.rms_norm, "true")
    require(hf, "norm_before_gate", not hf.norm_before_gate, "false")
    require(hf, "hidden_act", hf.hidden_act == "silu", "silu")
    return {"family": "mamba2", "vocab_size": hf.vocab_size, "hidden_size": hf.hidden_size,
            "num_layers": hf.num_hidden_layers, "d_state": hf.state_size, "d_conv": hf.conv_kernel,
            "expand": hf.expand, "headdim": hf.head_dim, "ngroups": hf.n_groups, "chunk_size": hf.chunk_size,
            "norm_eps": hf.layer_norm_epsilon, "tie_embeddings": bool(hf.tie_word_embeddings)}


def from_nemotron_h(hf: Any) -> dict[str, Any]:
    _ssm_checks(hf, hf.mamba_num_heads, hf.mamba_head_dim)
    require(hf, "mlp_hidden_act", hf.mlp_hidden_act == "relu2", "relu2")
    require(hf, "mamba_hidden_act", hf.mamba_hidden_act == "silu", "silu")
    require(hf, "mamba_proj_bias", not hf.mamba_proj_bias, "false")
    require(hf, "attention_bias", not hf.attention_bias, "false")
    require(hf, "mlp_bias", not hf.mlp_bias, "false")
    require(hf, "head_dim", hf.head_dim * hf.num_attention_heads == hf.hidden_size, "hidden_size / num_attention_heads")
    pattern = hf.hybrid_override_pattern
    require(hf, "hybrid_override_pattern", set(pattern) <= set("M*-"), "M (Mamba-2), * (attention), - (MLP)")
    return {"family": "hybrid", "vocab_size": hf.vocab_size, "hidden_size": hf.hidden_size,
            "num_layers": len(pattern), "pattern": pattern, "mixer": "mamba2", "d_state": hf.ssm_state_size,
            "d_conv": hf.conv_kernel, "expand": hf.expand, "headdim": hf.mamba_head_dim, "ngroups": hf.n_groups,
            "chunk_size": hf.chunk_size, "num_heads": hf.num_attention_heads,
            "num_kv_heads": hf.num_key_value_heads, "position_embedding": "none",
            "ffn_hidden_size": hf.intermediate_size, "mlp_activation": "relu2", "norm_eps": hf.layer_norm_epsilon,
            "tie_embeddings": bool(hf.tie_word_embeddings)}


NEMOTRON_H = HFAdapter("nemotron_h", to_nemotron_h, from_nemotron_h)
MAMBA2 = HFAdapter("mamba2", to_mamba2, from_mamba2)
