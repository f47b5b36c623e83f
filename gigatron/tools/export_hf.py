"""`gigatron export-hf --ckpt RUN_OR_TAG --out DIR`: a checkpoint as a transformers model directory.

hybrid -> NemotronHForCausalLM, mamba2 -> Mamba2ForCausalLM, gpt -> LlamaForCausalLM; config.json
plus model.safetensors, loadable with `AutoModelForCausalLM.from_pretrained(DIR)`. Tested to give
our logits within 1e-4 (fp32) for all three.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gigatron.models.gpt import GPTConfig
from gigatron.models.hybrid import HybridConfig

_BLOCK_TYPES = {"M": "mamba", "*": "attention", "-": "mlp"}


class ExportError(ValueError):
    """The model cannot be expressed in the target transformers class; names the config key."""


def _mamba2_keys(prefix: str, ours: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.in_proj.weight": state[f"{ours}.in_proj.weight"],
        f"{prefix}.conv1d.weight": state[f"{ours}.conv_weight"][:, None, :],
        f"{prefix}.conv1d.bias": state[f"{ours}.conv_bias"],
        f"{prefix}.dt_bias": state[f"{ours}.dt_bias"],
        f"{prefix}.A_log": state[f"{ours}.A_log"],
        f"{prefix}.D": state[f"{ours}.D"],
        f"{prefix}.norm.weight": state[f"{ours}.norm.weight"],
        f"{prefix}.out_proj.weight": state[f"{ours}.out_proj.weight"],
    }


def _ends(state: dict, last: int, embed: str, final_norm: str) -> dict[str, torch.Tensor]:
    # Tied models are written untied (lm_head = a copy of the embedding): the same function, and it
    # does not depend on how each transformers class re-ties weights when loading.
    head = state.get(f"{last}.output.weight", state["0.tokens.weight"])
    return {embed: state["0.tokens.weight"], final_norm: state[f"{last}.norm.weight"], "lm_head.weight": head.clone()}


def _nemotron_h(cfg: HybridConfig, state: dict, token_ids: dict[str, int | None]) -> tuple[Any, dict]:
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
        num_key_value_heads=cfg.kv_heads, head_dim=cfg.hidden_size // cfg.num_heads, intermediate_size=cfg.ffn_size,
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
    tensors = _ends(state, len(pattern) + 1, "model.embeddings.weight", "model.norm_f.weight")
    for i, symbol in enumerate(pattern):
        ours, theirs = f"{i + 1}", f"model.layers.{i}"
        tensors[f"{theirs}.norm.weight"] = state[f"{ours}.norm.weight"]
        if symbol == "M":
            tensors.update(_mamba2_keys(f"{theirs}.mixer", f"{ours}.mixer", state))
        elif symbol == "*":
            for name in "qkvo":
                tensors[f"{theirs}.mixer.{name}_proj.weight"] = state[f"{ours}.mixer.{name}.weight"]
        else:
            tensors[f"{theirs}.mixer.up_proj.weight"] = state[f"{ours}.mixer.up.weight"]
            tensors[f"{theirs}.mixer.down_proj.weight"] = state[f"{ours}.mixer.down.weight"]
    return hf, tensors


def _mamba2(cfg: HybridConfig, state: dict, token_ids: dict[str, int | None]) -> tuple[Any, dict]:
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
    tensors = _ends(state, cfg.num_layers + 1, "backbone.embeddings.weight", "backbone.norm_f.weight")
    for i in range(cfg.num_layers):
        tensors[f"backbone.layers.{i}.norm.weight"] = state[f"{i + 1}.norm.weight"]
        tensors.update(_mamba2_keys(f"backbone.layers.{i}.mixer", f"{i + 1}.mixer", state))
    return hf, tensors


def _llama(cfg: GPTConfig, state: dict, token_ids: dict[str, int | None]) -> tuple[Any, dict]:
    from transformers import LlamaConfig

    hf = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},  # transformers 5's rope_theta
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        max_position_embeddings=8192, **token_ids,
    )
    tensors = _ends(state, cfg.num_layers + 1, "model.embed_tokens.weight", "model.norm.weight")
    names = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
             "attn.o": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
             "mlp.down": "mlp.down_proj", "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
    for i in range(cfg.num_layers):
        for ours, theirs in names.items():
            tensors[f"model.layers.{i}.{theirs}.weight"] = state[f"{i + 1}.{ours}.weight"]
    return hf, tensors


def hf_config_and_tensors(model_cfg: Any, model: nn.Module, token_ids: dict[str, int | None] | None = None
                          ) -> tuple[Any, dict[str, torch.Tensor]]:
    """The transformers config and the renamed state dict for our model.

    `token_ids` sets bos/eos/pad_token_id (used by transformers' generate); None leaves them unset
    rather than inheriting another model's defaults.
    """
    token_ids = token_ids or {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    family = type(model_cfg).family
    builders = {"hybrid": _nemotron_h, "mamba2": _mamba2, "gpt": _llama}
    if family not in builders:
        raise ExportError(f"model.family={family} cannot be exported; supported: {', '.join(builders)}")
    return builders[family](model_cfg, state, token_ids)


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
    from gigatron.tools.checkpoint_io import training_manifest

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
    from gigatron.tools.checkpoint_io import load_checkpoint_model

    out = Path(out)
    # Checked before the (possibly long) load so that a typo fails at once.
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty directory; choose a new --out directory")
    cfg, model = load_checkpoint_model(ckpt)
    hf_model = to_hf_model(cfg.model, model, special_token_ids(cfg))
    hf_model.save_pretrained(out, safe_serialization=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron export-hf`."""
    parser.add_argument("--ckpt", required=True, help="run dir, checkpoints dir or step_NNNNNNNN dir")
    parser.add_argument("--out", required=True, help="new directory for config.json + model.safetensors")


def run(args: argparse.Namespace) -> int:
    """Export, or explain why not (exit 2)."""
    try:
        out = export(args.ckpt, args.out)
    except (ExportError, FileNotFoundError, FileExistsError, ValueError, ImportError) as exc:
        print(f"gigatron export-hf: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0
