"""Mix'n'Match extraction: a MatFormer checkpoint's submodel as a standalone ordinary checkpoint.

The output is a consolidated checkpoint of the same family with `model.ffn_hidden_sizes` set to the
chosen width of every FFN and no `model.matformer`: it loads, trains (`--resume-from`, fresh
optimizer at step 0) and generates like any model. The kept neurons are the ones the nested model
uses at that granularity (`nested_ffn.kept_neurons`: the first g·d_ff/blocks of every block), so
the extracted model computes what the nested one computes; `extract` checks that on a fixed batch
and removes the output if it does not.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint, LogicalCheckpoint, write_consolidated
from gigatron.checkpoint.param_plan import param_plans
from gigatron.checkpoint.reader import model_from_checkpoint, open_checkpoint
from gigatron.checkpoint.verify import VerificationError, fixed_batch
from gigatron.config.schema import MatFormerTrainingConfig
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import tp_plan
from gigatron.models.layers.nested_ffn import (
    ffn_granularity,
    kept_neurons,
    per_layer_fractions,
    submodel_config,
)
from gigatron.models.registry import build_model, get_model_spec


def ffn_parameter_dims(model_cfg: Any) -> list[dict[str, int]]:
    """For each nested FFN in depth order: its parameters' names and the dimension that indexes neurons."""
    model = build_model(model_cfg, LayerFactory(device="meta"))
    out = []
    for prefix, module in model.named_modules():
        if getattr(module, "nesting", None) is None:
            continue
        # Column-parallel weights (gate, up) index neurons by rows, the row-parallel down by columns:
        # exactly the split the TP plan records.
        out.append({f"{prefix}.{name}": tp_plan(param)[0] for name, param in module.named_parameters()})
    return out


class ExtractedCheckpoint:
    """A logical checkpoint reading `source` and keeping each FFN's chosen neurons (weights only)."""

    kind = "matformer-extract"
    has_optimizer = False
    optimizer_step = 0
    rng = None

    def __init__(self, source: LogicalCheckpoint, fractions: float | Sequence[float]) -> None:
        model = source.cfg.model
        self.source = source
        self.fractions = per_layer_fractions(fractions, len(model.ffn_sizes))
        self.cfg = copy.deepcopy(source.cfg)
        self.cfg.model = submodel_config(model, self.fractions)
        # An ordinary model: the MatFormer training section would be refused without model.matformer.
        self.cfg.matformer = MatFormerTrainingConfig()
        self.path = source.path
        self.plans = param_plans(self.cfg.model)
        # A new model: step 0 and a fresh data position, but the tokenizer it was trained with.
        fingerprint = source.trainer_state.get("tokenizer_fingerprint", "")
        self.trainer_state = {"step": 0, "tokens": 0, "loader": None, "tokenizer_fingerprint": fingerprint}
        self.layout = {"extracted_from": str(source.path), "ffn_granularities": self.fractions}
        self._kept: dict[str, tuple[int, torch.Tensor]] = {}
        for fraction, size, params in zip(self.fractions, model.ffn_sizes, ffn_parameter_dims(model), strict=True):
            index = kept_neurons(size, model.matformer.blocks, fraction)
            for name, dim in params.items():
                self._kept[name] = (dim, index)

    def stored_names(self) -> set[str]:
        """Every parameter of the extracted model."""
        return set(self.plans)

    def tensor(self, name: str, key: str | None = None) -> torch.Tensor:
        """The source tensor, cut to the kept neurons for FFN weights."""
        if key is not None:
            raise KeyError(f"{self.path}: an extracted model carries no optimizer moments")
        full = self.source.tensor(name)
        if name not in self._kept:
            return full
        dim, index = self._kept[name]
        return full.index_select(dim, index).contiguous()

    def model_weight(self, name: str) -> torch.Tensor:
        """Same as the master weight."""
        return self.tensor(name)


def verify_extraction(source: LogicalCheckpoint, result: LogicalCheckpoint, fractions: Sequence[float],
                      tolerance: float) -> float:
    """Max |logit difference| between the extracted model and the nested one at `fractions`; raises above tolerance."""
    ids = fixed_batch(source.cfg.model.vocab_size, source.cfg.data.seq_len)
    nested = model_from_checkpoint(source)
    with torch.no_grad(), ffn_granularity(nested, fractions):
        expected = nested(ids)
    with torch.no_grad():
        got = model_from_checkpoint(result)(ids)
    diff = float((got - expected).abs().max())
    if diff > tolerance:
        raise VerificationError(f"{result.path}: the extracted model's logits differ from the nested model's at the "
                                f"same widths by {diff:.3g} (tolerance {tolerance:g})")
    return diff


def extract(ckpt: str | Path | LogicalCheckpoint, fractions: float | Sequence[float], out: str | Path,
            tolerance: float = 1e-5, log=print, checksums: bool = True) -> Path:
    """Write the submodel at `fractions` (one value, or one per FFN layer) as consolidated `out`, verified.
    `ckpt` is a path (checked against its manifest: sha256 too with `checksums`) or a checkpoint
    the caller opened (and so checked) already."""
    source = open_checkpoint(ckpt, checksums) if isinstance(ckpt, (str, Path)) else ckpt
    if getattr(source.cfg.model, "matformer", None) is None:
        raise ValueError(f"{source.path}: model.family={type(source.cfg.model).family} without model.matformer; "
                         "only MatFormer checkpoints have nested submodels to extract")
    view = ExtractedCheckpoint(source, fractions)
    write_consolidated(view, Path(out), log=log)
    try:
        diff = verify_extraction(source, ConsolidatedCheckpoint(Path(out)), view.fractions, tolerance)
    except VerificationError:
        shutil.rmtree(out, ignore_errors=True)  # written by us a moment ago; never a user's data
        raise
    spec = get_model_spec(type(view.cfg.model).family)
    log(f"[extract] {source.path} -> {out}: FFN widths {view.cfg.model.ffn_hidden_sizes}, "
        f"{spec.num_params(view.cfg.model) / 1e6:.3f}M parameters (full: {spec.num_params(source.cfg.model) / 1e6:.3f}M); "
        f"logits within {diff:.3g} of the nested model on a fixed batch")
    return Path(out)
