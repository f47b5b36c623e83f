"""Choosing per-layer FFN granularities for a parameter budget (MatFormer's Mix'n'Match heuristic).

The paper finds the best submodels between two trained sizes are those whose granularity grows
slowly and never decreases with depth. Here a candidate is a non-decreasing sequence of the trained
granularities, one per FFN layer, that climbs through consecutive levels (each used by a contiguous
run of at least one layer); its span is how many levels it climbs, so span / layers is its slope.
For a target, every span from 0 (uniform) upwards proposes its largest model within the target
(ties: the most even runs, i.e. the straightest line); the smallest span whose proposal comes
within `tolerance` of the target wins. All proposals are returned as the alternatives considered.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gigatron.models.layers.nested_ffn import submodel_config
from gigatron.models.registry import get_model_spec

# Enumerating more sequences than this per span is pointless for a heuristic; larger spans are skipped.
_MAX_CANDIDATES_PER_SPAN = 2_000_000


@dataclass(frozen=True)
class Candidate:
    """One per-layer choice of granularities and its size."""

    fractions: tuple[float, ...]
    params: int
    span: int

    @property
    def unevenness(self) -> int:
        """Longest minus shortest run of one granularity (0: a straight staircase)."""
        runs = [len(list(group)) for _, group in itertools.groupby(self.fractions)]
        return max(runs) - min(runs)

    def describe(self) -> str:
        """e.g. '3×0.25, 3×0.5'."""
        return ", ".join(f"{len(list(g))}×{value:g}" for value, g in itertools.groupby(self.fractions))


class SizeModel:
    """Parameter count of any per-layer choice, from per-layer increments (sizes are additive over layers)."""

    def __init__(self, model_cfg: Any) -> None:
        self.levels = sorted(float(g) for g in model_cfg.matformer.granularities)
        self.layers = len(model_cfg.ffn_sizes)
        spec = get_model_spec(type(model_cfg).family)
        smallest = [self.levels[0]] * self.layers
        self.base = spec.num_params(submodel_config(model_cfg, smallest))
        self.delta = [[0] * len(self.levels) for _ in range(self.layers)]
        for layer in range(self.layers):
            for k, level in enumerate(self.levels[1:], start=1):
                choice = list(smallest)
                choice[layer] = level
                self.delta[layer][k] = spec.num_params(submodel_config(model_cfg, choice)) - self.base

    def params(self, level_indices: tuple[int, ...]) -> int:
        """Parameters of the model with level `level_indices[l]` at FFN layer l."""
        return self.base + sum(self.delta[layer][k] for layer, k in enumerate(level_indices))

    def candidate(self, level_indices: tuple[int, ...], span: int) -> Candidate:
        """A Candidate from level indices."""
        return Candidate(tuple(self.levels[k] for k in level_indices), self.params(level_indices), span)


def _staircases(layers: int, start: int, span: int) -> Iterator[tuple[int, ...]]:
    """Every way to climb levels start..start+span over `layers` layers, each level a run of >= 1 layers."""
    for cuts in itertools.combinations(range(1, layers), span):
        bounds = (0, *cuts, layers)
        yield tuple(start + k for k in range(span + 1) for _ in range(bounds[k + 1] - bounds[k]))


def proposals(model_cfg: Any, target: int) -> list[Candidate]:
    """For each span, its largest candidate within `target` parameters (None spans dropped)."""
    sizes = SizeModel(model_cfg)
    out = []
    for span in range(min(len(sizes.levels), sizes.layers)):
        if math.comb(sizes.layers - 1, span) * (len(sizes.levels) - span) > _MAX_CANDIDATES_PER_SPAN:
            break
        best: Candidate | None = None
        for start in range(len(sizes.levels) - span):
            for indices in _staircases(sizes.layers, start, span):
                cand = sizes.candidate(indices, span)
                if cand.params > target:
                    continue
                if best is None or (cand.params, -cand.unevenness) > (best.params, -best.unevenness):
                    best = cand
        if best is not None:
            out.append(best)
    return out


def choose(model_cfg: Any, target: int, tolerance: float = 0.02) -> tuple[Candidate, list[Candidate]]:
    """The heuristic's choice for `target` parameters and the alternatives it considered.

    Raises ValueError naming the smallest possible size when no submodel fits the target.
    """
    considered = proposals(model_cfg, target)
    if not considered:
        sizes = SizeModel(model_cfg)
        raise ValueError(f"--target-params {target:,} is below the smallest submodel ({sizes.base:,} parameters, "
                         f"every FFN at granularity {sizes.levels[0]:g})")
    for cand in considered:  # smallest span first
        if cand.params >= target * (1.0 - tolerance):
            return cand, considered
    return max(considered, key=lambda c: (c.params, -c.span)), considered
