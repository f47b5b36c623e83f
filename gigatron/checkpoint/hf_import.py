"""A local transformers model directory as a gigatron checkpoint (`gigatron import-hf`).

The family is the one whose `hf_adapter` (its folder's `hf.py`) takes config.json's model_type:
LlamaForCausalLM -> gpt, Mamba2ForCausalLM -> mamba2, NemotronHForCausalLM -> hybrid. The output is a
consolidated checkpoint (step 0, no optimizer state) that `pretrain --resume-from OUT`, `generate`,
`convert reshard` and `export-hf` accept. Weights are read with safetensors only (a directory that
holds only pickled `.bin` weights is refused); nothing is downloaded. After writing, the result is
loaded as our model and its logits compared with transformers' on a fixed batch (within 1e-4).
"""

from __future__ import annotations

from pathlib import Path

import torch

from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint, InMemoryCheckpoint, write_consolidated
from gigatron.checkpoint.hf_export import from_hf_layout, hf_adapters, hf_config_and_names
from gigatron.checkpoint.reader import model_from_checkpoint
from gigatron.checkpoint.verify import VerificationError, fixed_batch, max_logit_difference
from gigatron.config import config_from_dict
from gigatron.models.hf_adapter import UnsupportedModelError

__all__ = ["UnsupportedModelError", "import_hf"]


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
    adapters = {adapter.model_type: adapter for adapter in hf_adapters().values()}
    if hf.model_type not in adapters:
        raise UnsupportedModelError(f"{src}/config.json: model_type={hf.model_type!r} has no gigatron family; "
                                    f"supported: {', '.join(sorted(adapters))}")
    cfg = config_from_dict({"model": adapters[hf.model_type].from_hf(hf)})
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
