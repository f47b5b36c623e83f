"""Gadre et al. 2024's scaling law for over-trained models, and their loss-to-downstream-error fit.

    L(C, M) = E + (a·M^η + b·M^(−η))·C^(−η),   C = k·N·D (k = 6),  M = D/N (tokens per parameter)

Written out, (a·M^η + b·M^(−η))·C^(−η) = a·k^(−η)·N^(−2η) + b·k^(−η)·D^(−2η): Chinchilla's
L(N, D) with one exponent for N and D, which is what lets a fit on small models extrapolate along
the token multiplier M. As the authors' code (scaling/laws.py in mlfoundations/scaling) it is
fitted by least squares on the loss itself, Levenberg–Marquardt from a grid of starts, keeping the
lowest residual; here a and b are fitted as logarithms so that they stay positive.

    Err(L) = ε − k·exp(−γ·L)

maps a loss to an average top-1 error on downstream tasks (their Eq. 5), fitted the same way.
Bootstrap: refits on resampled points (with replacement) started from the full-data optimum.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from gigatron.scaling.points import Points, ScalingDataError

NAMES = ("E", "a", "b", "eta")
ERROR_NAMES = ("epsilon", "k", "gamma")
MIN_POINTS = 5  # four parameters
_GRID = {"E": (0.5, 1.0, 1.5, 2.0), "log_a": (0.0, 2.0, 4.0, 6.0), "log_b": (0.0, 2.0, 4.0, 6.0),
         "eta": (0.05, 0.1, 0.2, 0.3)}


def law(params: dict[str, float], n: np.ndarray | float, d: np.ndarray | float, k: float = 6.0
        ) -> np.ndarray | float:
    """L(C, M) for N parameters trained on D tokens."""
    c, m = k * np.asarray(n, dtype=float) * d, np.asarray(d, dtype=float) / n
    eta = params["eta"]
    return params["E"] + (params["a"] * m ** eta + params["b"] * m ** (-eta)) * c ** (-eta)


@dataclass
class OvertrainFit:
    """The four parameters, the RMSE of the loss and the k of C = k·N·D."""

    E: float
    a: float
    b: float
    eta: float
    rmse: float
    k: float = 6.0

    def values(self) -> dict[str, float]:
        """The parameters by name."""
        return {"E": self.E, "a": self.a, "b": self.b, "eta": self.eta}

    def loss(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray | float:
        """Predicted loss."""
        return law(self.values(), n, d, self.k)

    @property
    def theta(self) -> np.ndarray:
        """(E, log a, log b, η): the solver's coordinates."""
        return np.array([self.E, np.log(self.a), np.log(self.b), self.eta])


def _residuals(theta: np.ndarray, n: np.ndarray, d: np.ndarray, loss: np.ndarray, k: float) -> np.ndarray:
    e, log_a, log_b, eta = theta
    with np.errstate(over="ignore", invalid="ignore"):
        out = law({"E": e, "a": np.exp(log_a), "b": np.exp(log_b), "eta": eta}, n, d, k) - loss
    return np.where(np.isfinite(out), out, 1e6)


def _solve(start: np.ndarray, n: np.ndarray, d: np.ndarray, loss: np.ndarray, k: float) -> tuple[float, np.ndarray]:
    result = least_squares(_residuals, start, args=(n, d, loss, k), method="lm", max_nfev=2000)
    return float(np.sum(result.fun ** 2)), result.x


def check_points(points: Points) -> None:
    """Raise unless the points can carry the four-parameter fit."""
    if len(points) < MIN_POINTS:
        raise ScalingDataError(f"{points.source}: {len(points)} points; the overtrain fit has 4 parameters and needs "
                               f"at least {MIN_POINTS}")
    if len(np.unique(points.D / points.N)) < 2 or len(np.unique(points.N)) < 2:
        raise ScalingDataError(f"{points.source}: the overtrain fit needs at least two model sizes and two "
                               "token multipliers D/N")


def fit_overtrain(points: Points, k: float = 6.0, start: OvertrainFit | None = None) -> OvertrainFit:
    """The lowest-residual Levenberg–Marquardt optimum over the grid of starts (or from `start`)."""
    check_points(points)
    starts = ([start.theta] if start is not None else
              [np.array(s) for s in itertools.product(*_GRID.values())])
    best = min((_solve(s, points.N, points.D, points.loss, k) for s in starts), key=lambda pair: pair[0])
    e, log_a, log_b, eta = best[1]
    return OvertrainFit(float(e), float(np.exp(log_a)), float(np.exp(log_b)), float(eta),
                        float(np.sqrt(best[0] / len(points))), k)


def bootstrap_overtrain(points: Points, best: OvertrainFit, samples: int, seed: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[samples, 4] refits (E, a, b, η) on resampled points, each started from `best`."""
    out = []
    for i in range(samples):
        index = np.random.default_rng(seed * 1_000_003 + i).integers(0, len(points), len(points))
        fitted = fit_overtrain(points.subset(index), best.k, start=best)
        out.append([fitted.E, fitted.a, fitted.b, fitted.eta])
        if progress is not None and ((i + 1) % max(1, samples // 10) == 0 or i + 1 == samples):
            progress(i + 1, samples)
    return np.array(out).reshape(-1, 4)


# ---------------------------------------------------------------- loss -> downstream error


def error_law(params: dict[str, float], loss: np.ndarray | float) -> np.ndarray | float:
    """Err(L) = ε − k·exp(−γ·L)."""
    return params["epsilon"] - params["k"] * np.exp(-params["gamma"] * np.asarray(loss, dtype=float))


@dataclass
class ErrorFit:
    """ε, k, γ of Err(L) and the RMSE of the error."""

    epsilon: float
    k: float
    gamma: float
    rmse: float

    def values(self) -> dict[str, float]:
        """The parameters by name."""
        return {"epsilon": self.epsilon, "k": self.k, "gamma": self.gamma}

    def __call__(self, loss: np.ndarray | float) -> np.ndarray | float:
        return error_law(self.values(), loss)


def fit_error(loss: np.ndarray, error: np.ndarray, where: str = "data", start: ErrorFit | None = None) -> ErrorFit:
    """Least squares of Err(L) from a grid of starts, or from `start` (k as a logarithm, so k > 0)."""
    loss, error = np.asarray(loss, dtype=float), np.asarray(error, dtype=float)
    if len(loss) < 4:
        raise ScalingDataError(f"{where}: {len(loss)} points; Err(L) has 3 parameters and needs at least 4")

    def residuals(theta: np.ndarray) -> np.ndarray:
        eps, log_k, gamma = theta
        with np.errstate(over="ignore", invalid="ignore"):
            out = error_law({"epsilon": eps, "k": np.exp(log_k), "gamma": gamma}, loss) - error
        return np.where(np.isfinite(out), out, 1e6)

    starts = ([(start.epsilon, np.log(start.k), start.gamma)] if start is not None else
              itertools.product((0.5, 0.75, 1.0), (0.0, 1.0, 2.0, 4.0), (0.5, 1.0, 2.0)))
    best = min((least_squares(residuals, np.array(s), method="lm", max_nfev=2000) for s in starts),
               key=lambda r: float(np.sum(r.fun ** 2)))
    eps, log_k, gamma = best.x
    return ErrorFit(float(eps), float(np.exp(log_k)), float(gamma), float(np.sqrt(np.mean(best.fun ** 2))))


def bootstrap_error(loss: np.ndarray, error: np.ndarray, best: ErrorFit, samples: int, seed: int = 0) -> np.ndarray:
    """[samples, 3] refits (ε, k, γ) on resampled points, each started from `best`."""
    loss, error = np.asarray(loss, dtype=float), np.asarray(error, dtype=float)
    out = []
    for i in range(samples):
        index = np.random.default_rng(seed * 1_000_003 + i).integers(0, len(loss), len(loss))
        fitted = fit_error(loss[index], error[index], start=best)
        out.append([fitted.epsilon, fitted.k, fitted.gamma])
    return np.array(out).reshape(-1, 3)
