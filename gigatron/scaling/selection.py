"""Choosing a scaling-law form by how well it predicts what it was not fitted on.

Each form is fitted on the small models only (N below a threshold) and scored on the held-out
larger ones: the relative error of each prediction, their mean absolute value, and whether each
95% bootstrap interval (refits on resampled training points) contains the true loss. The form with
the lowest mean error is chosen; what a fit on small models says about big ones is the question a
scaling law is asked, so this is the score that matters (Gadre et al. 2024, Sec. 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gigatron.scaling import overtrain, parametric
from gigatron.scaling.points import Points, ScalingDataError

FORMS = ("parametric", "overtrain")


def _parametric(train: Points, samples: int, seed: int, starts: int, log: Callable[[str], None]
                ) -> tuple[dict[str, float], Callable[[dict[str, float], np.ndarray, np.ndarray], np.ndarray],
                           list[dict[str, float]]]:
    fitted = parametric.fit(train, workers=1, starts=starts)
    boot = parametric.bootstrap(train, fitted, samples, seed=seed, workers=1,
                                progress=lambda done, total: log(f"[select] parametric bootstrap {done}/{total}"))
    rows = [dict(zip(parametric.NAMES, s, strict=True)) for s in boot]

    def law(p: dict[str, float], n: np.ndarray, d: np.ndarray) -> np.ndarray:
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]

    return fitted.values(), law, rows


def _overtrain(train: Points, samples: int, seed: int, k: float, log: Callable[[str], None]
               ) -> tuple[dict[str, float], Callable[[dict[str, float], np.ndarray, np.ndarray], np.ndarray],
                          list[dict[str, float]]]:
    fitted = overtrain.fit_overtrain(train, k)
    boot = overtrain.bootstrap_overtrain(train, fitted, samples, seed,
                                         progress=lambda done, total: log(f"[select] overtrain bootstrap {done}/{total}"))
    rows = [dict(zip(overtrain.NAMES, s, strict=True)) for s in boot]
    return fitted.values(), lambda p, n, d: overtrain.law(p, n, d, k), rows


def select(points: Points, held_out: np.ndarray, forms: tuple[str, ...] = FORMS, bootstrap: int = 200,
           seed: int = 0, starts: int = 256, k: float = 6.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit every form on the points not `held_out`, score it on the held-out ones; the best is `chosen`."""
    held_out = np.asarray(held_out, dtype=bool)
    if not held_out.any() or held_out.all():
        raise ScalingDataError(f"{points.source}: the split leaves no {'held-out' if not held_out.any() else 'training'} "
                               "points; choose a threshold between the model sizes")
    unknown = [f for f in forms if f not in FORMS]
    if unknown:
        raise ScalingDataError(f"unknown form(s) {', '.join(unknown)}; valid: {', '.join(FORMS)}")
    train, test = points.subset(np.flatnonzero(~held_out)), points.subset(np.flatnonzero(held_out))
    result: dict[str, Any] = {"source": points.source, "train_points": len(train), "held_out_points": len(test),
                              "held_out": [{"N": float(n), "D": float(d), "loss": float(y)}
                                           for n, d, y in zip(test.N, test.D, test.loss, strict=True)],
                              "bootstrap_samples": bootstrap, "forms": {}}
    for form in forms:
        started = time.perf_counter()
        log(f"[select] fitting {form} on {len(train)} points")
        params, law, rows = (_parametric(train, bootstrap, seed, starts, log) if form == "parametric"
                             else _overtrain(train, bootstrap, seed, k, log))
        predicted = np.asarray(law(params, test.N, test.D), dtype=float)
        spread = np.array([law(r, test.N, test.D) for r in rows]) if rows else np.empty((0, len(test)))
        intervals = np.percentile(spread, [2.5, 97.5], axis=0).T if len(spread) else np.full((len(test), 2), np.nan)
        errors = (predicted - test.loss) / test.loss
        result["forms"][form] = {
            "params": params, "predicted": predicted.tolist(), "relative_errors": errors.tolist(),
            "mean_abs_relative_error": float(np.mean(np.abs(errors))), "intervals": intervals.tolist(),
            "covered": [bool(lo <= y <= hi) for (lo, hi), y in zip(intervals, test.loss, strict=True)],
            "seconds": time.perf_counter() - started,
        }
    result["chosen"] = min(result["forms"], key=lambda f: result["forms"][f]["mean_abs_relative_error"])
    return result


def markdown(result: dict[str, Any]) -> str:
    """One row per held-out model and form, then the mean errors and the chosen form."""
    forms = list(result["forms"])
    lines = [f"Fitted on {result['train_points']} points of `{result['source']}`, scored on "
             f"{result['held_out_points']} held-out ({result['bootstrap_samples']} bootstrap resamples)", "",
             "| N | D | true loss | " + " | ".join(f"{f}: predicted (95% interval), error" for f in forms) + " |",
             "|---|---|---|" + "---|" * len(forms)]
    for i, point in enumerate(result["held_out"]):
        cells = []
        for f in forms:
            r = result["forms"][f]
            lo, hi = r["intervals"][i]
            cells.append(f"{r['predicted'][i]:.4f} ({lo:.4f}–{hi:.4f}), {100 * r['relative_errors'][i]:+.2f}%")
        lines.append(f"| {point['N']:.3g} | {point['D']:.3g} | {point['loss']:.4f} | " + " | ".join(cells) + " |")
    lines.append("| mean \\|error\\| | | | " + " | ".join(
        f"{100 * result['forms'][f]['mean_abs_relative_error']:.2f}%, {sum(result['forms'][f]['covered'])}/"
        f"{result['held_out_points']} in interval" for f in forms) + " |")
    lines += ["", f"chosen: **{result['chosen']}**"]
    return "\n".join(lines) + "\n"
