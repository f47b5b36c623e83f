"""Chinchilla's approach 3: L(N, D) = E + A / N^α + B / D^β fitted in log space.

Minimises Σ Huber_δ(LSE(a − α log N, b − β log D, e) − log L) (A = eᵃ, B = eᵇ, E = eᵉ, δ = 1e-3)
with L-BFGS from Hoffmann et al.'s grid of starts (α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1},
a, b ∈ {0, 5, …, 25}), keeping the best optimum, as Besiroglu et al.'s replication did. Bootstrap
intervals refit resampled points (with replacement) from the full-data optimum.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from gigatron.scaling.points import Points, ScalingDataError

NAMES = ("E", "A", "B", "alpha", "beta")
GRID = {"alpha": np.arange(0.0, 2.01, 0.5), "beta": np.arange(0.0, 2.01, 0.5), "e": np.arange(-1.0, 1.01, 0.5),
        "a": np.arange(0.0, 25.01, 5.0), "b": np.arange(0.0, 25.01, 5.0)}
MIN_POINTS = 6  # five parameters


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
               ) -> tuple[float, np.ndarray]:
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    peak = terms.max(axis=0)
    weights = np.exp(terms - peak)
    total = weights.sum(axis=0)
    r = peak + np.log(total) - log_l
    weights /= total  # d LSE / d term
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    slope = np.where(small, r, delta * np.sign(r))
    grad = np.array([
        (slope * weights[0]).sum(), (slope * weights[1]).sum(), (slope * weights[2]).sum(),
        -(slope * weights[0] * log_n).sum(), -(slope * weights[1] * log_d).sum(),
    ])
    return float(loss), grad


# Starts are optimised to a moderate tolerance; the best few are then polished to a tight one. The
# polish changes the optimum only in the 7th digit, but running every start to it costs ~6x.
_COARSE = {"maxiter": 300, "ftol": 1e-12, "gtol": 1e-9, "maxcor": 20}
_TIGHT = {"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20}
_POLISHED = 5


def _minimise(start: np.ndarray, data: tuple[np.ndarray, ...], delta: float, tight: bool = True
              ) -> tuple[float, np.ndarray]:
    result = minimize(_objective, start, args=(*data, delta), jac=True, method="L-BFGS-B",
                      options=_TIGHT if tight else _COARSE)
    return float(result.fun), result.x


def _grid_chunk(args: tuple[list[np.ndarray], tuple[np.ndarray, ...], float]) -> list[tuple[float, np.ndarray]]:
    starts, data, delta = args
    return [_minimise(start, data, delta, tight=False) for start in starts]


def _pool(workers: int) -> ProcessPoolExecutor:
    # Spawned (not forked) children with one BLAS thread each: forked children inherit OpenBLAS's
    # busy-waiting thread pool, and two of them on two cores ran 35x slower than one process.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _workers(workers: int | None, jobs: int) -> int:
    """Processes worth starting: spawning one costs ~1 s, a fit ~10 ms."""
    available = workers or min(len(os.sched_getaffinity(0)), 8)
    return max(1, min(available, jobs // 200))


def _data(points: Points) -> tuple[np.ndarray, ...]:
    return np.log(points.N), np.log(points.D), np.log(points.loss)


def check_points(points: Points) -> None:
    """Raise unless the points can carry a five-parameter fit."""
    if len(points) < MIN_POINTS:
        raise ScalingDataError(f"{points.source}: {len(points)} points; the parametric fit has 5 parameters and "
                               f"needs at least {MIN_POINTS}")
    for name, values in (("N", points.N), ("D", points.D), ("loss", points.loss)):
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ScalingDataError(f"{points.source}: column {name} has non-positive or non-finite values")
    if len(np.unique(points.N)) < 2 or len(np.unique(points.D)) < 2:
        raise ScalingDataError(f"{points.source}: N and D must each take at least two values")


@dataclass
class ParametricFit:
    """E, A, B, alpha, beta and the objective value at the optimum."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float

    @classmethod
    def from_theta(cls, theta: np.ndarray, objective: float) -> ParametricFit:
        a, b, e, alpha, beta = theta
        return cls(float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), float(alpha), float(beta), objective)

    @property
    def theta(self) -> np.ndarray:
        """(a, b, e, alpha, beta): the optimiser's coordinates."""
        return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])

    def values(self) -> dict[str, float]:
        """The five parameters by name."""
        return {name: getattr(self, name) for name in NAMES}

    def loss(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray | float:
        """Predicted loss for N parameters trained on D tokens."""
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)


def grid_starts() -> np.ndarray:
    """Hoffmann et al.'s 4,500 starts as (a, b, e, alpha, beta) rows."""
    return np.array([[a, b, e, alpha, beta] for alpha, beta, e, a, b in
                     itertools.product(GRID["alpha"], GRID["beta"], GRID["e"], GRID["a"], GRID["b"])])


def _score(starts: np.ndarray, data: tuple[np.ndarray, ...], delta: float) -> np.ndarray:
    """The objective at every start at once: [starts]."""
    log_n, log_d, log_l = data
    a, b, e, alpha, beta = (starts[:, i:i + 1] for i in range(5))
    lse = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)
    r = np.abs(lse - log_l)
    return np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)).sum(axis=1)


def fit(points: Points, delta: float = 1e-3, workers: int | None = None, starts: int | None = None
        ) -> ParametricFit:
    """The best L-BFGS optimum over Hoffmann's grid of starts.

    L-BFGS runs from all 4,500 starts (None), or from the `starts` best-scoring of them (~8x faster
    for 256; on the Chinchilla points both find the same optimum), in parallel over up to `workers`
    processes when there are enough starts to pay for them.
    """
    check_points(points)
    data = _data(points)
    grid = grid_starts()
    if starts is not None and starts < len(grid):
        grid = grid[np.argsort(_score(grid, data, delta), kind="stable")[:starts]]
    starts = list(grid)
    workers = _workers(workers, len(starts))
    if workers <= 1:
        optima = _grid_chunk((starts, data, delta))
    else:
        chunks = [(starts[i::workers], data, delta) for i in range(workers)]
        with _pool(workers) as pool:
            optima = [pair for chunk in pool.map(_grid_chunk, chunks) for pair in chunk]
    optima.sort(key=lambda pair: pair[0])
    polished = [_minimise(theta, data, delta) for _, theta in optima[:_POLISHED]]
    value, theta = min(polished, key=lambda pair: pair[0])
    return ParametricFit.from_theta(theta, value)


def _bootstrap_chunk(args: tuple[Points, np.ndarray, float, list[int]]) -> list[np.ndarray]:
    points, start, delta, seeds = args
    out = []
    for seed in seeds:
        index = np.random.default_rng(seed).integers(0, len(points), len(points))
        value, theta = _minimise(start, _data(points.subset(index)), delta)
        fitted = ParametricFit.from_theta(theta, value)
        out.append(np.array([fitted.E, fitted.A, fitted.B, fitted.alpha, fitted.beta]))
    return out


def bootstrap(points: Points, best: ParametricFit, samples: int, delta: float = 1e-3, seed: int = 0,
              workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[samples, 5] refits (E, A, B, alpha, beta) on resampled points, started from `best`.
    `progress(done, samples)` is called at least ten times (for up to ten workers) as the refits finish."""
    seeds = [seed * 1_000_003 + i for i in range(samples)]
    report = progress or (lambda _done, _total: None)
    workers = _workers(workers, samples)
    # ~10 reports: chunks of about a tenth of the seeds, interleaved so each chunk costs about the
    # same, and as many chunks as a multiple of the workers so that none waits on a last one.
    parts = max(1, min(samples, workers * -(-10 // workers)))
    chunks = [(points, best.theta, delta, seeds[i::parts]) for i in range(parts)]
    results: dict[int, list[np.ndarray]] = {}
    done = 0
    if workers <= 1:
        for i, chunk in enumerate(chunks):
            results[i] = _bootstrap_chunk(chunk)
            done += len(chunk[3])
            report(done, samples)
    else:
        with _pool(workers) as pool:
            futures = {pool.submit(_bootstrap_chunk, chunk): i for i, chunk in enumerate(chunks)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                done += len(results[futures[future]])
                report(done, samples)
    # Back in seed order (chunk i holds seeds i, i + parts, ...), so the result is the same for any
    # number of workers.
    ordered = [None] * samples
    for i, rows in results.items():
        ordered[i::parts] = rows
    return np.array(ordered)


def allocation(fitted: ParametricFit | dict[str, float], flops_per_param_token: float = 6.0) -> dict[str, float]:
    """Compute-optimal exponents and constant: N_opt = G (C/k)^a, D_opt = (C/k)^b / G, with k = 6 for C = 6ND."""
    p = fitted.values() if isinstance(fitted, ParametricFit) else fitted
    alpha, beta = p["alpha"], p["beta"]
    g = (alpha * p["A"] / (beta * p["B"])) ** (1.0 / (alpha + beta))
    return {"a": beta / (alpha + beta), "b": alpha / (alpha + beta), "G": g, "k": flops_per_param_token}


def optimal_n_d(params: dict[str, float], compute: float, flops_per_param_token: float = 6.0) -> tuple[float, float]:
    """(N_opt, D_opt) at compute C."""
    alloc = allocation(params, flops_per_param_token)
    scaled = compute / flops_per_param_token
    return alloc["G"] * scaled ** alloc["a"], scaled ** alloc["b"] / alloc["G"]
