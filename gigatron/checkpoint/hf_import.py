"""A local transformers model directory as a gigatron checkpoint (`gigatron import-hf`).

LlamaForCausalLM -> gpt, Mamba2ForCausalLM -> mamba2, NemotronHForCausalLM -> hybrid. The output is a
consolidated checkpoint (step 0, no optimizer state) that `pretrain --resume-from OUT`, `generate`,
`convert reshard` and `export-hf` accept. Weights are read with safetensors only (a directory that
holds only pickled `.bin` weights is refused); nothing is downloaded. After writing, the result is
loaded as our model and its logits compared with transformers' on a fixed batch (within 1e-4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint, InMemoryCheckpoint, write_consolidated
from gigatron.checkpoint.hf_export import from_hf_layout, hf_config_and_names
from gigatron.checkpoint.reader import model_from_checkpoint
from gigatron.checkpoint.verify import VerificationError, fixed_batch, max_logit_difference
from gigatron.config import config_from_dict


class UnsupportedModelError(ValueError):
    """The transformers model uses a feature our model family cannot express; names the config key."""


def _require(hf: Any, key: str, ok: bool, valid: str) -> None:
    if not ok:
        raise UnsupportedModelError(f"config.json {key}={getattr(hf, key, None)!r} cannot be represented; valid: {valid}")


def _llama(hf: Any) -> dict[str, Any]:
    _require(hf, "attention_bias", not hf.attention_bias, "false")
    _require(hf, "mlp_bias", not getattr(hf, "mlp_bias", False), "false")
    _require(hf, "hidden_act", hf.hidden_act == "silu", "silu")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    _require(hf, "head_dim", head_dim * hf.num_attention_heads == hf.hidden_size, "hidden_size / num_attention_heads")
    rope = getattr(hf, "rope_parameters", None) or {"rope_type": "default", "rope_theta": getattr(hf, "rope_theta", 1e4)}
    _require(hf, "rope_parameters", rope.get("rope_type", "default") == "default", "rope_type=default (no scaling)")
    return {"family": "gpt", "vocab_size": hf.vocab_size, "hidden_size": hf.hidden_size,
            "num_layers": hf.num_hidden_layers, "num_heads": hf.num_attention_heads,
            "num_kv_heads": hf.num_key_value_heads, "ffn_hidden_size": hf.intermediate_size,
            "rope_base": float(rope["rope_theta"]), "norm_eps": hf.rms_norm_eps,
            "tie_embeddings": bool(hf.tie_word_embeddings)}


def _ssm_checks(hf: Any, heads: int, head_dim: int) -> None:
    _require(hf, "use_bias", not hf.use_bias, "false")
    _require(hf, "use_conv_bias", hf.use_conv_bias, "true")
    _require(hf, "expand", heads * head_dim == hf.expand * hf.hidden_size, "num_heads * head_dim = expand * hidden_size")
    low, high = hf.time_step_limit
    _require(hf, "time_step_limit", low <= 1e-6 and high == float("inf"), "(0, inf): our dt is not clamped")


def _mamba2(hf: Any) -> dict[str, Any]:
    _ssm_checks(hf, hf.num_heads, hf.head_dim)
    _require(hf, "rms_norm", hf.rms_norm, "true")
    _require(hf, "norm_before_gate", not hf.norm_before_gate, "false")
    _require(hf, "hidden_act", hf.hidden_act == "silu", "silu")
    return {"family": "mamba2", "vocab_size": hf.vocab_size, "hidden_size": hf.hidden_size,
            "num_layers": hf.num_hidden_layers, "d_state": hf.state_size, "d_conv": hf.conv_kernel,
            "expand": hf.expand, "headdim": hf.head_dim, "ngroups": hf.n_groups, "chunk_size": hf.chunk_size,
            "norm_eps": hf.layer_norm_epsilon, "tie_embeddings": bool(hf.tie_word_embeddings)}


def _nemotron_h(hf: Any) -> dict[str, Any]:
    _ssm_checks(hf, hf.mamba_num_heads, hf.mamba_head_dim)
    _require(hf, "mlp_hidden_act", hf.mlp_hidden_act == "relu2", "relu2")
    _require(hf, "mamba_hidden_act", hf.mamba_hidden_act == "silu", "silu")
    _require(hf, "mamba_proj_bias", not hf.mamba_proj_bias, "false")
    _require(hf, "attention_bias", not hf.attention_bias, "false")
    _require(hf, "mlp_bias", not hf.mlp_bias, "false")
    _require(hf, "head_dim", hf.head_dim * hf.num_attention_heads == hf.hidden_size, "hidden_size / num_attention_heads")
    pattern = hf.hybrid_override_pattern
    _require(hf, "hybrid_override_pattern", set(pattern) <= set("M*-"), "M (Mamba-2), * (attention), - (MLP)")
    return {"family": "hybrid", "vocab_size": hf.vocab_size, "hidden_size": hf.hidden_size,
            "num_layers": len(pattern), "pattern": pattern, "mixer": "mamba2", "d_state": hf.ssm_state_size,
            "d_conv": hf.conv_kernel, "expand": hf.expand, "headdim": hf.mamba_head_dim, "ngroups": hf.n_groups,
            "chunk_size": hf.chunk_size, "num_heads": hf.num_attention_heads,
            "num_kv_heads": hf.num_key_value_heads, "position_embedding": "none",
            "ffn_hidden_size": hf.intermediate_size, "mlp_activation": "relu2", "norm_eps": hf.layer_norm_epsilon,
            "tie_embeddings": bool(hf.tie_word_embeddings)}


_FAMILIES = {"llama": _llama, "mamba2": _mamba2, "nemotron_h": _nemotron_h}


def _safetensors_files(src: Path) -> list[Path]:
    found = sorted(src.glob("*.safetensors"))
    if found:
        return found
    pickled = sorted(p.name for p in src.glob("*.bin")) + sorted(p.name for p in src.glob("*.pt"))
    hint = (f" It holds {', '.join(pickled[:3])}: pickled weights are never loaded (they can run code); "
            "convert them to safetensors with a tool you trust first.") if pickled else ""
    raise FileNotFoundError(f"{src}: no model.safetensors or model.safetensors.index.json.{hint}")


def import_hf(src: str | Path, out: str | Path, tolerance: float = 1e-4, log=print) -> Path:
    """Convert the transformers directory `src` into the consolidated checkpoint `out`, verified."""
    from transformers import AutoConfig, AutoModelForCausalLM


    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: no config.json; pass a local transformers model directory")
    hf = AutoConfig.from_pretrained(src, local_files_only=True)
    if hf.model_type not in _FAMILIES:
        raise UnsupportedModelError(f"{src}/config.json: model_type={hf.model_type!r} has no gigatron family; "
                           f"supported: {', '.join(_FAMILIES)}")
    cfg = config_from_dict({"model": _FAMILIES[hf.model_type](hf)})
    _, names = hf_config_and_names(cfg.model)
    _safetensors_files(src)  # a clear refusal for pickled-only directories, before transformers looks
    # Loaded through transformers (safetensors only) rather than read raw: its module names are the
    # ones our mapping uses, whatever renaming a transformers version applies on disk.
    theirs_model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, local_files_only=True,
                                                        use_safetensors=True).eval()
    stored = theirs_model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for theirs, ours in names:
        if ours in tensors:
            continue  # the tied head: the embedding already read
        if theirs not in stored:
            raise UnsupportedModelError(f"{src}: {type(theirs_model).__name__} has no parameter {theirs!r} "
                                        f"(needed for {ours})")
        tensors[ours] = from_hf_layout(theirs, stored[theirs]).detach().float().contiguous()
    write_consolidated(InMemoryCheckpoint(src, cfg, tensors, {"source": "transformers"}), out, log=log)
    ours_model = model_from_checkpoint(ConsolidatedCheckpoint(out))
    diff = max_logit_difference(ours_model, theirs_model, fixed_batch(cfg.model.vocab_size, 64))
    if diff > tolerance:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        raise VerificationError(f"the imported model gives logits {diff:.3g} away from {type(theirs_model).__name__} "
                                f"(tolerance {tolerance:g}); nothing was kept")
    log(f"[verify] {out}: imported {type(theirs_model).__name__} as model.family={type(cfg.model).family}; "
        f"max logit difference {diff:.3g} on a fixed batch")
    return out
