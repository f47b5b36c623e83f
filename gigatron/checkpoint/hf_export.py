"""A checkpoint as a transformers model directory (`gigatron export-hf`).

Each family with a transformers equivalent maps itself in its folder's `hf.py` (its ModelSpec's
`hf_adapter`): hybrid -> NemotronHForCausalLM, mamba2 -> Mamba2ForCausalLM, gpt -> LlamaForCausalLM; config.json
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
from gigatron.models.hf_adapter import ExportError, HFAdapter, NamePairs
from gigatron.models.registry import get_model_spec, model_families

__all__ = ["ExportError", "export", "hf_config_and_names", "hf_config_and_tensors", "to_hf_model", "verify_export"]

def to_hf_layout(hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Our tensor in the shape transformers stores (Mamba's depthwise conv has a singleton channel dim)."""
    return tensor[:, None, :] if hf_name.endswith("conv1d.weight") else tensor


def from_hf_layout(hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_hf_layout`."""
    return tensor[:, 0, :] if hf_name.endswith("conv1d.weight") else tensor


def hf_adapters() -> dict[str, HFAdapter]:
    """family -> its transformers adapter, for every family whose ModelSpec has one."""
    specs = {name: get_model_spec(name) for name in model_families()}
    return {name: spec.hf_adapter for name, spec in specs.items() if spec.hf_adapter is not None}


def hf_config_and_names(model_cfg: Any, token_ids: dict[str, int | None] | None = None) -> tuple[Any, NamePairs]:
    """The transformers config and the (transformers name, our name) pairs of every tensor."""
    token_ids = token_ids or {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    family = type(model_cfg).family
    adapter = get_model_spec(family).hf_adapter
    if adapter is None:
        raise ExportError(f"model.family={family} cannot be exported to transformers; supported: "
                          f"{', '.join(hf_adapters())}. `gigatron convert consolidate` writes any family as "
                          "safetensors + config.json (see docs/convert.md)")
    return adapter.to_hf(model_cfg, token_ids)


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


def export(ckpt: str | Path, out: str | Path, checksums: bool = True) -> Path:
    """Write config.json + model.safetensors (+ generation_config.json) for the checkpoint into `out`.
    `checksums`: check the checkpoint's sha256s against its manifest (its sizes always)."""
    out = Path(out)
    # Checked before the (possibly long) load so that a typo fails at once.
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty directory; choose a new --out directory")
    cfg, model = load_checkpoint_model(ckpt, checksums)
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
