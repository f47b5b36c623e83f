"""A checkpoint as a transformers model directory (`gigatron export-hf`).

hybrid -> NemotronHForCausalLM, mamba2 -> Mamba2ForCausalLM, gpt -> LlamaForCausalLM; config.json
plus model.safetensors, loadable with `AutoModelForCausalLM.from_pretrained(DIR)`. Every export
reloads what it wrote with transformers and compares logits with ours (fp32, within 1e-4). The
(transformers name, our name) pairs are shared with `import_hf`, so both directions agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gigatron.checkpoint.reader import load_checkpoint_model, training_manifest
from gigatron.checkpoint.verify import VerificationError, fixed_batch, max_logit_difference
from gigatron.models.gpt import GPTConfig
from gigatron.models.hybrid import HybridConfig

_BLOCK_TYPES = {"M": "mamba", "*": "attention", "-": "mlp"}


class ExportError(ValueError):
    """The model cannot be expressed in the target transformers class; names the config key."""


def _mamba2_names(prefix: str, ours: str) -> list[tuple[str, str]]:
    return [(f"{prefix}.{theirs}", f"{ours}.{mine}") for theirs, mine in (
        ("in_proj.weight", "in_proj.weight"), ("conv1d.weight", "conv_weight"), ("conv1d.bias", "conv_bias"),
        ("dt_bias", "dt_bias"), ("A_log", "A_log"), ("D", "D"), ("norm.weight", "norm.weight"),
        ("out_proj.weight", "out_proj.weight"))]


def _ends(last: int, embed: str, final_norm: str, tied: bool) -> list[tuple[str, str]]:
    # Tied models are written untied (lm_head = a copy of the embedding): the same function, and it
    # does not depend on how each transformers class re-ties weights when loading.
    head = "0.tokens.weight" if tied else f"{last}.output.weight"
    return [(embed, "0.tokens.weight"), (final_norm, f"{last}.norm.weight"), ("lm_head.weight", head)]


def _uniform_ffn_size(cfg: GPTConfig | HybridConfig) -> int:
    """transformers' configs have one intermediate_size; a Mix'n'Match model with mixed widths has none."""
    sizes = set(cfg.ffn_sizes) or {cfg.ffn_size}
    if len(sizes) > 1:
        raise ExportError(f"model.ffn_hidden_sizes={cfg.ffn_hidden_sizes}: transformers' config has a single "
                          "intermediate_size, so per-layer FFN widths cannot be exported; extract a uniform "
                          "submodel (gigatron matformer extract --widths G) to export")
    return sizes.pop()


def _nemotron_h(cfg: HybridConfig, token_ids: dict[str, int | None]) -> tuple[Any, list[tuple[str, str]]]:
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
        intermediate_size=_uniform_ffn_size(cfg),
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
    names = _ends(len(pattern) + 1, "model.embeddings.weight", "model.norm_f.weight", cfg.tie_embeddings)
    for i, symbol in enumerate(pattern):
        ours, theirs = f"{i + 1}", f"model.layers.{i}"
        names.append((f"{theirs}.norm.weight", f"{ours}.norm.weight"))
        if symbol == "M":
            names += _mamba2_names(f"{theirs}.mixer", f"{ours}.mixer")
        elif symbol == "*":
            names += [(f"{theirs}.mixer.{n}_proj.weight", f"{ours}.mixer.{n}.weight") for n in "qkvo"]
        else:
            names += [(f"{theirs}.mixer.up_proj.weight", f"{ours}.mixer.up.weight"),
                      (f"{theirs}.mixer.down_proj.weight", f"{ours}.mixer.down.weight")]
    return hf, names


def _mamba2(cfg: HybridConfig, token_ids: dict[str, int | None]) -> tuple[Any, list[tuple[str, str]]]:
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
    names = _ends(cfg.num_layers + 1, "backbone.embeddings.weight", "backbone.norm_f.weight", cfg.tie_embeddings)
    for i in range(cfg.num_layers):
        names.append((f"backbone.layers.{i}.norm.weight", f"{i + 1}.norm.weight"))
        names += _mamba2_names(f"backbone.layers.{i}.mixer", f"{i + 1}.mixer")
    return hf, names


_LLAMA_NAMES = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
                "attn.o": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
                "mlp.down": "mlp.down_proj", "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


def _llama(cfg: GPTConfig, token_ids: dict[str, int | None]) -> tuple[Any, list[tuple[str, str]]]:
    from transformers import LlamaConfig

    hf = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=_uniform_ffn_size(cfg),
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},  # transformers 5's rope_theta
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        max_position_embeddings=8192, **token_ids,
    )
    names = _ends(cfg.num_layers + 1, "model.embed_tokens.weight", "model.norm.weight", cfg.tie_embeddings)
    for i in range(cfg.num_layers):
        names += [(f"model.layers.{i}.{theirs}.weight", f"{i + 1}.{ours}.weight") for ours, theirs in _LLAMA_NAMES.items()]
    return hf, names


_BUILDERS = {"hybrid": _nemotron_h, "mamba2": _mamba2, "gpt": _llama}


def to_hf_layout(hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Our tensor in the shape transformers stores (Mamba's depthwise conv has a singleton channel dim)."""
    return tensor[:, None, :] if hf_name.endswith("conv1d.weight") else tensor


def from_hf_layout(hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_hf_layout`."""
    return tensor[:, 0, :] if hf_name.endswith("conv1d.weight") else tensor


def hf_config_and_names(model_cfg: Any, token_ids: dict[str, int | None] | None = None
                        ) -> tuple[Any, list[tuple[str, str]]]:
    """The transformers config and the (transformers name, our name) pairs of every tensor."""
    token_ids = token_ids or {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    family = type(model_cfg).family
    if family not in _BUILDERS:
        raise ExportError(f"model.family={family} cannot be exported to transformers; supported: "
                          f"{', '.join(_BUILDERS)}. `gigatron convert consolidate` writes any family as "
                          "safetensors + config.json (see docs/convert.md)")
    return _BUILDERS[family](model_cfg, token_ids)


def hf_config_and_tensors(model_cfg: Any, model: nn.Module, token_ids: dict[str, int | None] | None = None
                          ) -> tuple[Any, dict[str, torch.Tensor]]:
    """The transformers config and the renamed state dict for our model.

    `token_ids` sets bos/eos/pad_token_id (used by transformers' generate); None leaves them unset
    rather than inheriting another model's defaults.
    """
    hf, names = hf_config_and_names(model_cfg, token_ids)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    # Each tensor is cloned: a tied head must be its own tensor in the file.
    return hf, {theirs: to_hf_layout(theirs, state[ours]).clone() for theirs, ours in names}


def to_hf_model(model_cfg: Any, model: nn.Module, token_ids: dict[str, int | None] | None = None) -> nn.Module:
    """The equivalent transformers model, in memory (fp32)."""
    from transformers import AutoModelForCausalLM

    hf_cfg, tensors = hf_config_and_tensors(model_cfg, model, token_ids)
    hf_model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    missing, unexpected = hf_model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ExportError(f"parameter names do not line up with {type(hf_model).__name__}: missing {missing[:6]}, "
                          f"unexpected {unexpected[:6]}")
    return hf_model.eval()


def special_token_ids(cfg: Any) -> dict[str, int | None]:
    """bos/eos/pad ids of the run's tokenizer from its training data manifest; unset if unavailable."""
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    try:
        entry = json.loads(training_manifest(cfg).read_text())["tokenizer"]
    except (OSError, ValueError, KeyError, TypeError):
        return ids  # the model is still exact; only transformers' generate() defaults are missing
    for key in ids:
        value = entry.get(key.removesuffix("_token_id") + "_id")
        # sentencepiece reports an absent special token as -1.
        ids[key] = value if isinstance(value, int) and value >= 0 else None
    return ids


def export(ckpt: str | Path, out: str | Path) -> Path:
    """Write config.json + model.safetensors (+ generation_config.json) for the checkpoint into `out`."""
    out = Path(out)
    # Checked before the (possibly long) load so that a typo fails at once.
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty directory; choose a new --out directory")
    cfg, model = load_checkpoint_model(ckpt)
    hf_model = to_hf_model(cfg.model, model, special_token_ids(cfg))
    hf_model.save_pretrained(out, safe_serialization=True)
    verify_export(cfg, model, out)
    return out


def verify_export(cfg: Any, model: nn.Module, out: Path, tolerance: float = 1e-4, log=print) -> float:
    """Reload `out` with transformers and compare its logits with ours on a fixed batch.

    A mismatch removes `out` (it was created empty by the export) and raises.
    """
    import shutil

    from transformers import AutoModelForCausalLM


    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, local_files_only=True).eval()
    diff = max_logit_difference(model, loaded, fixed_batch(cfg.model.vocab_size, cfg.data.seq_len))
    if diff > tolerance:
        shutil.rmtree(out, ignore_errors=True)
        raise VerificationError(f"the exported {type(loaded).__name__} gives logits {diff:.3g} away from ours "
                                f"(tolerance {tolerance:g}); nothing was kept")
    log(f"[verify] {out}: {type(loaded).__name__} reloaded; max logit difference {diff:.3g} on a fixed batch")
    return diff
