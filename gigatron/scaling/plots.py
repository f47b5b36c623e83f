"""PNG plots of scaling fits (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gigatron.scaling.points import Points


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def parametric_plots(points: Points, fitted, samples: np.ndarray, k: float, out: Path) -> None:
    """data.png: loss vs compute coloured by N with the fitted L at each point's N, D; frontier.png:
    N_opt(C) with its 95% bootstrap band."""
    from gigatron.scaling.parametric import NAMES, optimal_n_d

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    scatter = ax.scatter(points.C, points.loss, c=np.log10(points.N), s=12, cmap="viridis", label="data")
    order = np.argsort(points.C)
    ax.scatter(points.C[order], fitted.loss(points.N, points.D)[order], s=4, c="red", label="fit at each (N, D)")
    grid = np.geomspace(points.C.min(), points.C.max() * 100, 60)
    frontier = [fitted.loss(*optimal_n_d(fitted.values(), c, k)) for c in grid]
    ax.plot(grid, frontier, "k--", label="compute-optimal L(C)")
    ax.set(xscale="log", xlabel="training compute C (FLOPs)", ylabel="loss", title="parametric fit")
    fig.colorbar(scatter, label="log10 N")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "data.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    n_opt = [optimal_n_d(fitted.values(), c, k)[0] for c in grid]
    ax.plot(grid, n_opt, "k-", label="N_opt(C)")
    if len(samples):
        rows = [dict(zip(NAMES, s, strict=True)) for s in samples]
        band = np.array([[optimal_n_d(r, c, k)[0] for c in grid] for r in rows])
        ax.fill_between(grid, *np.percentile(band, [2.5, 97.5], axis=0), alpha=0.3, label="95% bootstrap band")
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="N_opt", title="compute-optimal frontier")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=110)
    plt.close(fig)


def isoflop_plot(points: Points, fitted, path: Path) -> None:
    """Loss vs N per budget with its parabola and minimum."""
    from gigatron.scaling.isoflop import group_budgets

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for group, coeffs, budget, n_opt in zip(group_budgets(points), fitted.parabolas, fitted.budgets, fitted.n_opt,
                                            strict=True):
        line = ax.scatter(points.N[group], points.loss[group], s=14, label=f"C≈{budget:.2g}")
        x = np.linspace(np.log(points.N[group].min()), np.log(points.N[group].max()), 50)
        ax.plot(np.exp(x), np.polyval(coeffs, x), color=line.get_facecolor()[0])
        ax.plot([n_opt], [np.polyval(coeffs, np.log(n_opt))], "kx")
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP profiles")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def frontier_plot(fitted, samples: np.ndarray, method: str, path: Path) -> None:
    """Per-budget optima and the fitted N_opt ∝ C^a with its bootstrap band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(fitted.budgets, fitted.n_opt, s=16, label="optima")
    grid = np.geomspace(fitted.budgets.min(), fitted.budgets.max() * 10, 50)
    ax.plot(grid, fitted.n_at(grid), "k-", label=f"N_opt ∝ C^{fitted.a:.3f}")
    if len(samples):
        band = np.array([np.exp(s[1]) * grid ** s[0] for s in samples])
        ax.fill_between(grid, *np.percentile(band, [2.5, 97.5], axis=0), alpha=0.3, label="95% bootstrap band")
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="N_opt", title=f"{method} frontier")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def power_plot(x: np.ndarray, y: np.ndarray, fitted, samples: np.ndarray, x_name: str, y_name: str,
               path: Path) -> None:
    """Data, the fitted power law and its bootstrap band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(x, y, s=16, label="data")
    grid = np.geomspace(x.min(), x.max() * 10, 60)
    ax.plot(grid, fitted(grid), "k-", label=f"{fitted.E:.3g} + {fitted.A:.3g}·x^-{fitted.alpha:.3f}")
    if len(samples):
        band = np.array([s[0] + s[1] * grid ** (-s[2]) for s in samples])
        ax.fill_between(grid, *np.percentile(band, [2.5, 97.5], axis=0), alpha=0.3, label="95% bootstrap band")
    ax.set(xscale="log", xlabel=x_name, ylabel=y_name, title="power-law fit")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
