"""MatFormer's nested FFN (Devvrit, Kudugunta et al. 2023): granularity g uses the first g·d_ff neurons.

The FFN's hidden neurons are cut into `blocks` equal contiguous blocks; granularity g keeps the
first g·d_ff/blocks neurons of every block (rows of up/gate, columns of down). With blocks = 1 this
is the paper's "first m neurons". Tensor parallelism splits d_ff into contiguous shards, so a run
with parallel.tp = t needs blocks to be a multiple of t: then every rank holds whole blocks and
nests within its own shard, all ranks do the same work at every granularity, and the submodel is
the same logical function on any layout (blocks is part of the model, not of the layout).
Extraction (`gigatron matformer extract`) keeps exactly these neurons, block by block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

DEFAULT_GRANULARITIES = [0.125, 0.25, 0.5, 1.0]


@dataclass
class MatFormerConfig:
    """`model.matformer`: which nested FFN widths exist and how they are laid out."""

    # Fractions of d_ff that are trained submodels; the largest must be 1 (the full model).
    granularities: list[float] = field(default_factory=lambda: list(DEFAULT_GRANULARITIES))
    # Contiguous blocks of d_ff that nest separately; parallel.tp must divide it (see module docstring).
    blocks: int = 1

    def problems(self, ffn_sizes: Sequence[int], tp: int) -> list[str]:
        """What is wrong with this nesting for FFNs of `ffn_sizes` on `tp` ranks; names the keys."""
        out: list[str] = []
        g = self.granularities
        if not g or any(not 0 < x <= 1 for x in g) or len(set(g)) != len(g) or max(g) != 1.0:
            return [f"model.matformer.granularities={g} must be distinct fractions in (0, 1] including 1 "
                    "(the full FFN), e.g. [0.125, 0.25, 0.5, 1]"]
        if self.blocks < 1:
            return [f"model.matformer.blocks={self.blocks} must be >= 1"]
        if self.blocks % tp:
            out.append(f"model.matformer.blocks={self.blocks} is not divisible by parallel.tp={tp}: every TP rank "
                       f"must nest within its own shard; set model.matformer.blocks to a multiple of {tp} (it is "
                       "part of the model, so keep it when changing layout)")
        for size in sorted(set(ffn_sizes)):
            if size % self.blocks:
                out.append(f"the FFN size {size} is not divisible by model.matformer.blocks={self.blocks}")
                continue
            block = size // self.blocks
            bad = [x for x in g if abs(x * block - round(x * block)) > 1e-9]
            if bad:
                out.append(f"model.matformer.granularities {bad} do not give whole neurons: the FFN size {size} has "
                           f"blocks of {block} neurons (model.matformer.blocks={self.blocks}), and g·{block} must "
                           "be an integer")
        return out


def kept_neurons(ffn_size: int, blocks: int, fraction: float) -> torch.Tensor:
    """Logical indices of the neurons granularity `fraction` keeps, in order (what extraction copies)."""
    block = ffn_size // blocks
    width = round(fraction * block)
    return torch.cat([torch.arange(b * block, b * block + width) for b in range(blocks)])


class Nesting:
    """The nested-width state of one FFN on one TP rank: which local neurons are active now.

    `enter`/`leave` are the factory's TP region functions: the column-parallel input (identity
    forward, gradient summed over TP) and the row-parallel output (summed over TP), applied by
    hand because a submodel multiplies by slices of the layers' weights.
    """

    def __init__(self, ffn_size: int, cfg: MatFormerConfig, tp_size: int, enter, leave) -> None:
        self.granularities = sorted(cfg.granularities)
        self.local_blocks = cfg.blocks // tp_size
        self.block = ffn_size // cfg.blocks
        self.enter, self.leave = enter, leave
        self.fraction = 1.0
        self._index: dict[float, torch.Tensor] = {}
        # Inference only (`cached_submodel_weights`): contiguous copies of the kept rows/columns per
        # granularity, so that a submodel reads only its weights instead of gathering them each call.
        self.cache_slices = False
        self._slices: dict[tuple[str, float], tuple[int, int, torch.Tensor]] = {}

    def set_fraction(self, fraction: float) -> None:
        """Make granularity `fraction` active; it must be one the model was trained with."""
        if fraction not in self.granularities:
            raise ValueError(f"FFN granularity {fraction} is not one of the model's "
                             f"model.matformer.granularities {self.granularities}")
        self.fraction = fraction

    def active(self, device: torch.device) -> slice | torch.Tensor | None:
        """Local neurons in use: None for all, a slice for one local block, else an index tensor."""
        if self.fraction == 1.0:
            return None
        width = round(self.fraction * self.block)
        if self.local_blocks == 1:
            return slice(0, width)
        # Under torch.compile the index is made in the graph: a cache filled on the first call would
        # make that call's graph (and what activation recomputation saves) differ from later ones.
        index = None if torch.compiler.is_compiling() else self._index.get(self.fraction)
        if index is None or index.device != device:
            index = kept_neurons(self.local_blocks * self.block, self.local_blocks, self.fraction).to(device)
            if not torch.compiler.is_compiling():
                self._index[self.fraction] = index
        return index


    def rows(self, weight: torch.Tensor, keep: slice | torch.Tensor) -> torch.Tensor:
        """`weight[keep]` (the kept output neurons of gate/up)."""
        return self._sliced("rows", weight, keep)

    def columns(self, weight: torch.Tensor, keep: slice | torch.Tensor) -> torch.Tensor:
        """`weight[:, keep]` (the kept input neurons of down)."""
        return self._sliced("columns", weight, keep)

    def _sliced(self, role: str, weight: torch.Tensor, keep: slice | torch.Tensor) -> torch.Tensor:
        def cut() -> torch.Tensor:
            return weight[keep] if role == "rows" else weight[:, keep]

        if not self.cache_slices or torch.is_grad_enabled():
            return cut()
        key = (f"{role}:{id(weight)}", self.fraction)
        cached = self._slices.get(key)
        # Valid while the weight is the same storage, unmodified (its version counts in-place writes).
        if cached is None or cached[0] != weight._version or cached[1] != weight.data_ptr():
            cached = (weight._version, weight.data_ptr(), cut().contiguous())
            self._slices[key] = cached
        return cached[2]


@contextmanager
def cached_submodel_weights(model: nn.Module) -> Iterator[None]:
    """Inside: nested FFNs run without gradients keep a contiguous copy of each granularity's weights.

    A gathered slice (blocks > 1) or a column slice is otherwise re-made on every call, which made a
    1/2 submodel's decoding step slower than the full model's. Costs the copies' memory (g of each
    FFN per granularity used); they are dropped on exit.
    """
    nested = nestings(model)
    for n in nested:
        n.cache_slices = True
    try:
        yield
    finally:
        for n in nested:
            n.cache_slices = False
            n._slices.clear()


def nestings(model: nn.Module) -> list[Nesting]:
    """The nested FFNs of `model` in depth order (module registration order)."""
    return [m.nesting for m in model.modules() if getattr(m, "nesting", None) is not None]


@contextmanager
def ffn_granularity(model: nn.Module, fractions: float | Sequence[float]) -> Iterator[None]:
    """Run `model` as its submodel: one granularity for every FFN, or one per FFN in depth order."""
    nested = nestings(model)
    if not nested:
        raise ValueError("the model has no nested FFNs; set model.matformer to train a MatFormer")
    per_layer = per_layer_fractions(fractions, len(nested))
    before = [n.fraction for n in nested]
    try:
        for n, fraction in zip(nested, per_layer, strict=True):
            n.set_fraction(fraction)
        yield
    finally:
        for n, fraction in zip(nested, before, strict=True):
            n.fraction = fraction


def ffn_width_problems(ffn_size: int, count: int, per_layer: Sequence[int] | None,
                       matformer: MatFormerConfig | None, tp: int) -> list[str]:
    """Checks shared by the families with FFNs: per-layer sizes (`model.ffn_hidden_sizes`) and nesting.

    `ffn_size` is the uniform size (`model.ffn_hidden_size`), `count` the number of FFN layers.
    """
    out: list[str] = []
    ffn_sizes = [ffn_size] * count
    if per_layer is not None:
        ffn_sizes = list(per_layer)
        if len(per_layer) != count:
            out.append(f"model.ffn_hidden_sizes has {len(per_layer)} entries but the model has {count} "
                       "FFN layers (one size per FFN layer, in depth order)")
        if matformer is not None:
            out.append("model.ffn_hidden_sizes and model.matformer are exclusive: nesting needs one FFN size "
                       "(model.ffn_hidden_size); per-layer sizes are what `gigatron matformer extract` writes")
    for i, size in enumerate(per_layer or []):
        if size < 1:
            out.append(f"model.ffn_hidden_sizes[{i}]={size} must be >= 1")
    bad = sorted({s for s in ffn_sizes if s % tp})
    if bad:
        key = "model.ffn_hidden_sizes" if per_layer is not None else "model.ffn_hidden_size"
        out.append(f"{key}: FFN size(s) {bad} not divisible by parallel.tp={tp}")
    if matformer is not None:
        out += matformer.problems(ffn_sizes, tp)
    return out


def per_layer_fractions(fractions: float | Sequence[float], count: int) -> list[float]:
    """One granularity per FFN layer from a single value or a per-layer list (checked)."""
    if isinstance(fractions, (int, float)):
        return [float(fractions)] * count
    out = [float(f) for f in fractions]
    if len(out) != count:
        raise ValueError(f"{len(out)} FFN widths given but the model has {count} FFN layers")
    return out


def submodel_config(model_cfg, fractions: float | Sequence[float]):
    """The config of the ordinary model a granularity (or per-layer granularities) selects.

    Its FFNs have `model.ffn_hidden_sizes` of g·d_ff and no nesting: what `gigatron matformer
    extract` writes, and what the FLOPs of a nested step are counted from.
    """
    nesting = model_cfg.matformer
    if nesting is None:
        raise ValueError(f"model.family={type(model_cfg).family} has no model.matformer section: not a MatFormer")
    sizes = model_cfg.ffn_sizes
    chosen = per_layer_fractions(fractions, len(sizes))
    unknown = sorted(set(chosen) - {float(g) for g in nesting.granularities})
    if unknown:
        raise ValueError(f"FFN widths {unknown} are not among the model's model.matformer.granularities "
                         f"{nesting.granularities}")
    widths = [len(kept_neurons(size, nesting.blocks, g)) for size, g in zip(sizes, chosen, strict=True)]
    return dataclasses.replace(model_cfg, ffn_hidden_sizes=widths, matformer=None)
