"""A saturating power law y = E + A · x^(−α) for any metric against N, C or D.

Used where no two-variable law applies, e.g. text-image alignment scores against model size,
compute or data in the diffusion T2I study (A < 0 for metrics that rise towards E). Least squares
in y from a grid of α starts; bootstrap by resampling points.

E may be bounded (`e_bounds`): over a narrow range of x (a CPU-scale study spans ~3x in size) a
metric that falls about log-linearly is fitted best by α → 0 with E → −∞, a floor no loss or error
rate can have. Bounding E at 0 for such metrics keeps the fit a power law with a usable exponent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from gigatron.scaling.points import ScalingDataError

MIN_POINTS = 4  # three parameters


@dataclass
class PowerFit:
    """y = E + A · x^(−alpha)."""

    E: float
    A: float
    alpha: float
    rmse: float

    def __call__(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.A * np.power(x, -self.alpha)

    def values(self) -> dict[str, float]:
        """The three parameters."""
        return {"E": self.E, "A": self.A, "alpha": self.alpha}


Bounds = tuple[float, float]
UNBOUNDED: Bounds = (-np.inf, np.inf)


def _solve(x: np.ndarray, y: np.ndarray, start: tuple[float, float, float], e_bounds: Bounds) -> PowerFit | None:
    # x is rescaled to its geometric mean so that A stays O(y) whatever the units of x.
    scale = float(np.exp(np.mean(np.log(x))))
    u = x / scale

    def residuals(p: np.ndarray) -> np.ndarray:
        return p[0] + p[1] * np.power(u, -p[2]) - y

    start = (float(np.clip(start[0], *e_bounds)), start[1], start[2])
    try:
        result = least_squares(residuals, np.array(start), bounds=([e_bounds[0], -np.inf, 1e-6],
                                                                  [e_bounds[1], np.inf, 10.0]),
                               xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=5000)
    except (ValueError, FloatingPointError):
        return None
    e, a_scaled, alpha = result.x
    rmse = float(np.sqrt(np.mean(result.fun ** 2)))
    return PowerFit(float(e), float(a_scaled * scale ** alpha), float(alpha), rmse)


def fit_power(x: np.ndarray, y: np.ndarray, where: str = "data", start: PowerFit | None = None,
              e_bounds: Bounds = UNBOUNDED) -> PowerFit:
    """Best least-squares fit over α starts in [0.05, 2] (or from `start` alone, as the bootstrap
    does from the full-data fit), with E within `e_bounds`; raises naming the problem with the data."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not e_bounds[0] < e_bounds[1]:
        raise ScalingDataError(f"{where}: the bounds on E ({e_bounds[0]}, {e_bounds[1]}) are empty; the lower must be "
                               "below the upper")
    if len(x) < MIN_POINTS:
        raise ScalingDataError(f"{where}: {len(x)} points; y = E + A x^-alpha has 3 parameters and needs at least "
                               f"{MIN_POINTS}")
    if np.any(~np.isfinite(x)) or np.any(x <= 0) or np.any(~np.isfinite(y)):
        raise ScalingDataError(f"{where}: x must be finite and > 0 and y finite")
    if len(np.unique(x)) < 3:
        raise ScalingDataError(f"{where}: x takes {len(np.unique(x))} distinct values; at least 3 are needed")
    if start is not None:
        scale = float(np.exp(np.mean(np.log(x))))
        solved = _solve(x, y, (start.E, start.A / scale ** start.alpha, start.alpha), e_bounds)
        if solved is None:
            raise ScalingDataError(f"{where}: the power law could not be fitted")
        return solved
    spread = float(y.max() - y.min()) or 1.0
    best = None
    for alpha in (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0):
        for sign in (1.0, -1.0):
            e0 = y.min() - 0.1 * spread if sign > 0 else y.max() + 0.1 * spread
            candidate = _solve(x, y, (e0, sign * spread, alpha), e_bounds)
            if candidate is not None and (best is None or candidate.rmse < best.rmse):
                best = candidate
    if best is None:
        raise ScalingDataError(f"{where}: the power law could not be fitted")
    return best


def bootstrap_power(x: np.ndarray, y: np.ndarray, samples: int, seed: int = 0,
                    e_bounds: Bounds = UNBOUNDED) -> np.ndarray:
    """[kept samples, 3] of (E, A, alpha) on resampled points."""
    full = fit_power(x, y, e_bounds=e_bounds)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(samples):
        index = rng.integers(0, len(x), len(x))
        try:
            rows.append(list(fit_power(x[index], y[index], start=full, e_bounds=e_bounds).values().values()))
        except ScalingDataError:
            continue
    return np.array(rows)
