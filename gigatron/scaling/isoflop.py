"""Chinchilla's approach 2 (IsoFLOP profiles) and approach 1 (the envelope of training curves).

IsoFLOP: points are grouped by compute budget; in each budget a parabola in log N through the
losses gives N_opt(C) at its minimum; then log N_opt = a log C + c by least squares (and the same
for D_opt = C / (k N_opt)). Envelope: on a grid of compute values, the lowest loss any run reached
and the N of that run; then the same regression. Bootstrap: resample points within each budget
(IsoFLOP) or whole runs (envelope), refit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gigatron.scaling.points import Points, ScalingDataError

MIN_PER_BUDGET = 3


@dataclass
class FrontierFit:
    """N_opt = exp(c_n) C^a, D_opt = exp(c_d) C^b, from per-budget optima."""

    a: float
    c_n: float
    b: float
    c_d: float
    budgets: np.ndarray  # C of each budget
    n_opt: np.ndarray  # N_opt per budget
    parabolas: list[np.ndarray]  # per budget: (p2, p1, p0) of loss = p2 x² + p1 x + p0, x = log N

    def n_at(self, compute: np.ndarray | float) -> np.ndarray | float:
        """Compute-optimal parameters."""
        return np.exp(self.c_n) * np.power(compute, self.a)

    def d_at(self, compute: np.ndarray | float) -> np.ndarray | float:
        """Compute-optimal tokens."""
        return np.exp(self.c_d) * np.power(compute, self.b)

    def values(self) -> dict[str, float]:
        """Exponents and log-constants."""
        return {"a": self.a, "c_n": self.c_n, "b": self.b, "c_d": self.c_d}


def group_budgets(points: Points, tolerance: float = 0.05) -> list[np.ndarray]:
    """Indices of points whose compute is within `tolerance` (relative) of the budget's first point."""
    order = np.argsort(points.C, kind="stable")
    groups, current = [], [order[0]]
    for i in order[1:]:
        if points.C[i] <= points.C[current[0]] * (1 + tolerance):
            current.append(i)
        else:
            groups.append(np.array(current))
            current = [i]
    groups.append(np.array(current))
    return groups


def _regress(budgets: np.ndarray, n_opt: np.ndarray, k: float) -> tuple[float, float, float, float]:
    a, c_n = np.polyfit(np.log(budgets), np.log(n_opt), 1)
    b, c_d = np.polyfit(np.log(budgets), np.log(budgets / (k * n_opt)), 1)
    return float(a), float(c_n), float(b), float(c_d)


def _parabola_minimum(n: np.ndarray, loss: np.ndarray, where: str) -> tuple[float, np.ndarray]:
    coeffs = np.polyfit(np.log(n), loss, 2)
    if coeffs[0] <= 0:
        raise ScalingDataError(f"{where}: the losses have no minimum in N (the parabola opens downwards); "
                               "add model sizes on both sides of the optimum")
    return float(np.exp(-coeffs[1] / (2 * coeffs[0]))), coeffs


def fit_isoflop(points: Points, k: float = 6.0, tolerance: float = 0.05) -> FrontierFit:
    """Approach 2; raises naming a budget with fewer than 3 points or no minimum."""
    groups = group_budgets(points, tolerance)
    if len(groups) < 2:
        raise ScalingDataError(f"{points.source}: {len(groups)} compute budget(s); IsoFLOP needs at least 2")
    budgets, n_opt, parabolas = [], [], []
    for group in groups:
        budget = float(np.exp(np.mean(np.log(points.C[group]))))
        where = f"{points.source}: budget C≈{budget:.3g}"
        if len(group) < MIN_PER_BUDGET or len(np.unique(points.N[group])) < MIN_PER_BUDGET:
            raise ScalingDataError(f"{where} has {len(np.unique(points.N[group]))} distinct model sizes; a parabola "
                                   f"needs at least {MIN_PER_BUDGET}")
        optimum, coeffs = _parabola_minimum(points.N[group], points.loss[group], where)
        budgets.append(budget)
        n_opt.append(optimum)
        parabolas.append(coeffs)
    budgets_arr, n_arr = np.array(budgets), np.array(n_opt)
    return FrontierFit(*_regress(budgets_arr, n_arr, k), budgets_arr, n_arr, parabolas)


def bootstrap_isoflop(points: Points, samples: int, k: float = 6.0, tolerance: float = 0.05, seed: int = 0
                      ) -> np.ndarray:
    """[kept samples, 4] of (a, c_n, b, c_d); resamples without a minimum or with < 3 sizes are skipped."""
    groups = group_budgets(points, tolerance)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(samples):
        index = np.concatenate([rng.choice(g, len(g), replace=True) for g in groups])
        try:
            rows.append(list(fit_isoflop(points.subset(index), k, tolerance).values().values()))
        except ScalingDataError:
            continue
    return np.array(rows)


def envelope_points(curves: list[tuple[float, np.ndarray, np.ndarray]], grid_size: int = 60
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(compute grid, N of the run with the lowest loss at that compute) over runs' training curves."""
    if len({n for n, _, _ in curves}) < 2:
        raise ScalingDataError("the envelope method needs training curves of at least 2 model sizes")
    low = max(c[0] for _, c, _ in curves if len(c))
    high = max(c[-1] for _, c, _ in curves if len(c))
    grid = np.geomspace(low, high, grid_size)
    winners = []
    for compute in grid:
        best = (np.inf, np.nan)
        for n, c, loss in curves:
            if c[0] <= compute <= c[-1]:
                value = float(np.interp(compute, c, loss))
                if value < best[0]:
                    best = (value, n)
        winners.append(best[1])
    winners_arr = np.array(winners)
    # Where one of the two smallest or largest models wins, the optimum may lie beyond the sizes
    # trained (with noisy curves, a neighbour of the edge wins in its place): those compute values
    # would pin the frontier towards the edge of the grid and flatten the exponent.
    sizes = sorted({n for n, _, _ in curves})
    low_edge, high_edge = (sizes[1], sizes[-2]) if len(sizes) >= 5 else (sizes[0], sizes[-1])
    keep = np.isfinite(winners_arr) & (winners_arr > low_edge) & (winners_arr < high_edge)
    return grid[keep], winners_arr[keep]


def fit_envelope(curves: list[tuple[float, np.ndarray, np.ndarray]], k: float = 6.0) -> FrontierFit:
    """Approach 1."""
    grid, winners = envelope_points(curves)
    if len(np.unique(winners)) < 2:
        raise ScalingDataError("one model size has the lowest loss at every compute: the envelope has no trend; "
                               "add smaller and larger models")
    return FrontierFit(*_regress(grid, winners, k), grid, winners, [])


def bootstrap_envelope(curves: list[tuple[float, np.ndarray, np.ndarray]], samples: int, k: float = 6.0,
                       seed: int = 0) -> np.ndarray:
    """Resample whole runs; degenerate resamples are skipped."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(samples):
        chosen = [curves[i] for i in rng.integers(0, len(curves), len(curves))]
        try:
            rows.append(list(fit_envelope(chosen, k).values().values()))
        except (ScalingDataError, np.linalg.LinAlgError, ValueError):
            continue
    return np.array(rows)
