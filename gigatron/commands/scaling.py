"""`gigatron scaling fit|predict`: scaling laws from real runs.

    gigatron scaling fit --csv points.csv --method parametric --out fits/chinchilla [--drop-highest 5]
    gigatron scaling fit --runs runs/* --method envelope --out fits/env
    gigatron scaling fit --sweep sweeps/size-x-tokens --method isoflop --out fits/iso
    gigatron scaling fit --csv t2i.csv --method power --x-col params --y-col color_accuracy --out fits/t2i
    gigatron scaling fit --csv runs.csv --method overtrain --out fits/overtrain     # Gadre et al.'s L(C, M)
    gigatron scaling fit --csv evals.csv --method error --x-col loss --y-col error --out fits/err
    gigatron scaling select --csv runs.csv --holdout-above 1e9 --out fits/select   # fit small, score big
    gigatron scaling predict --fit fits/chinchilla/fit.json --compute 5.76e23
    gigatron scaling predict --fit fits/chinchilla/fit.json --params 70e9 --tokens 1.4e12

`fit` writes fit.json (parameters, 95% bootstrap intervals, the bootstrap samples), fit.md (a
table) and PNG plots into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gigatron.commands.arg_types import at_least, positive
from gigatron.scaling.points import ScalingDataError

METHODS = ("parametric", "overtrain", "isoflop", "envelope", "power", "error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands of `gigatron scaling`."""
    sub = parser.add_subparsers(dest="scaling_command", required=True, metavar="SUBCOMMAND")
    fit = sub.add_parser("fit", help="fit a scaling law; writes fit.json, fit.md and plots")
    source = fit.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="CSV with N, loss and D or C columns (names: see docs/scaling.md)")
    source.add_argument("--runs", nargs="+", help="gigatron run directories")
    source.add_argument("--sweep", help="a `gigatron sweep` directory (reads its summary.csv)")
    fit.add_argument("--method", choices=METHODS, default="parametric")
    fit.add_argument("--out", required=True, help="directory for fit.json, fit.md and PNG plots")
    fit.add_argument("--bootstrap", type=at_least(0, int), default=1000, help="bootstrap resamples (0: none)")
    fit.add_argument("--drop-highest", type=at_least(0, int), default=0, help="drop the N highest-loss points first")
    fit.add_argument("--delta", type=positive(), default=1e-3, help="Huber delta (parametric)")
    fit.add_argument("--starts", type=at_least(0, int), default=0,
                     help="parametric: run L-BFGS from the K best-scoring of the 4,500 grid starts (0: all)")
    fit.add_argument("--flops-per-param-token", type=positive(), default=6.0, help="k in C = k N D")
    fit.add_argument("--budget-tolerance", type=positive(), default=0.05, help="relative C spread of one IsoFLOP budget")
    for kind in ("n", "d", "c", "loss"):
        fit.add_argument(f"--{kind}-col", default=None, help=f"name of the {kind.upper()} column in --csv")
    fit.add_argument("--x-col", default=None, help="power: x column (e.g. params, flops, tokens)")
    fit.add_argument("--y-col", default=None, help="power: y column (any metric)")
    fit.add_argument("--e-min", type=float, default=-np.inf,
                     help="power: lower bound on E, e.g. 0 for a loss or error rate (default: none)")
    fit.add_argument("--e-max", type=float, default=np.inf,
                     help="power: upper bound on E, e.g. 1 for an accuracy (default: none)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--workers", type=positive(int), default=None, help="processes (default: the CPUs available)")
    select = sub.add_parser("select", help="fit each form on the small models, score it on the large ones")
    select.add_argument("--csv", required=True, help="CSV with N, loss and D or C columns")
    select.add_argument("--holdout-above", type=positive(), required=True, metavar="N",
                        help="models with at least this many parameters are held out and predicted")
    select.add_argument("--forms", default=",".join(("parametric", "overtrain")),
                        help="comma-separated forms to compare (default: %(default)s)")
    select.add_argument("--bootstrap", type=at_least(0, int), default=200, help="bootstrap resamples per form")
    select.add_argument("--starts", type=at_least(1, int), default=256,
                        help="parametric: L-BFGS from the K best-scoring grid starts (default: %(default)s)")
    select.add_argument("--flops-per-param-token", type=positive(), default=6.0, help="k in C = k N D")
    select.add_argument("--seed", type=int, default=0)
    select.add_argument("--out", default=None, help="directory for select.json and select.md (default: print only)")
    for kind in ("n", "d", "c", "loss"):
        select.add_argument(f"--{kind}-col", default=None, help=f"name of the {kind.upper()} column in --csv")
    predict = sub.add_parser("predict", help="predictions with 95%% intervals from a fit.json")
    predict.add_argument("--fit", required=True, help="fit.json written by `gigatron scaling fit`")
    predict.add_argument("--compute", type=positive(), default=None, help="compute budget C (FLOPs)")
    predict.add_argument("--params", type=positive(), default=None, help="N (parametric: with --tokens; power: x)")
    predict.add_argument("--tokens", type=positive(), default=None, help="D")
    predict.add_argument("--x", type=positive(), default=None, help="power: x")


def _interval(samples: np.ndarray) -> list[list[float]]:
    if samples.size == 0:
        return []
    return np.percentile(samples, [2.5, 97.5], axis=0).T.tolist()


def _load_points(args: argparse.Namespace):
    from gigatron.scaling import points as pts

    if args.runs:
        data = pts.read_runs(args.runs)
    elif args.sweep:
        data = pts.read_sweep(args.sweep)
    else:
        data = pts.read_csv(args.csv, args.n_col, args.d_col, args.c_col, args.loss_col)
    return data.drop_highest_losses(args.drop_highest)


def _print_now(text: str) -> None:
    print(text, flush=True)


def fit_command(args: argparse.Namespace, log=_print_now) -> dict[str, Any]:
    """Run one fit and write its outputs; returns the fit.json content. This process's BLAS runs
    one thread: the fits are small, and an idle-spinning thread pool on a busy machine made them
    several times slower (worker processes get one thread each too)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _fit(args, log)


def _fit(args: argparse.Namespace, log=_print_now) -> dict[str, Any]:
    from gigatron.scaling import isoflop, parametric, plots, power

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {"method": args.method, "bootstrap_samples": args.bootstrap}
    if args.method == "error":
        if not (args.csv and args.x_col and args.y_col):
            raise ScalingDataError("--method error needs --csv with --x-col (the loss) and --y-col (the error)")
        from gigatron.scaling import overtrain
        from gigatron.scaling.points import read_xy

        x, y = read_xy(args.csv, args.x_col, args.y_col)
        fitted = overtrain.fit_error(x, y, args.csv)
        samples = overtrain.bootstrap_error(x, y, fitted, args.bootstrap, args.seed) if args.bootstrap else np.empty((0, 3))
        result.update(source=args.csv, x=args.x_col, y=args.y_col, n_points=len(x), params=fitted.values(),
                      rmse=fitted.rmse, names=list(overtrain.ERROR_NAMES), intervals=_interval(samples),
                      samples=samples.tolist())
    elif args.method == "power":
        if not (args.csv and args.x_col and args.y_col):
            raise ScalingDataError("--method power needs --csv with --x-col and --y-col")
        from gigatron.scaling.points import read_xy

        x, y = read_xy(args.csv, args.x_col, args.y_col)
        bounds = (args.e_min, args.e_max)
        fitted = power.fit_power(x, y, args.csv, e_bounds=bounds)
        samples = (power.bootstrap_power(x, y, args.bootstrap, args.seed, e_bounds=bounds) if args.bootstrap
                   else np.empty((0, 3)))
        result.update(source=args.csv, x=args.x_col, y=args.y_col, n_points=len(x), params=fitted.values(),
                      e_bounds=[float(b) if np.isfinite(b) else None for b in bounds],
                      rmse=fitted.rmse, names=["E", "A", "alpha"], intervals=_interval(samples),
                      samples=samples.tolist())
        plots.power_plot(x, y, fitted, samples, args.x_col, args.y_col, out / "power.png")
    else:
        data = _load_points(args)
        result.update(source=data.source, n_points=len(data), dropped_highest=args.drop_highest,
                      flops_per_param_token=args.flops_per_param_token)
        if args.method == "parametric":
            fitted = parametric.fit(data, args.delta, args.workers, args.starts or None)
            samples = (parametric.bootstrap(data, fitted, args.bootstrap, args.delta, args.seed, args.workers,
                                            progress=lambda done, total: log(f"[bootstrap] {done}/{total} refits"))
                       if args.bootstrap else np.empty((0, 5)))
            alloc = parametric.allocation(fitted, args.flops_per_param_token)
            alloc_samples = np.array([[s[4] / (s[3] + s[4]), s[3] / (s[3] + s[4])] for s in samples])
            result.update(params=fitted.values(), objective=fitted.objective, delta=args.delta,
                          names=list(parametric.NAMES), intervals=_interval(samples), samples=samples.tolist(),
                          allocation=alloc, allocation_intervals=_interval(alloc_samples))
            plots.parametric_plots(data, fitted, samples, args.flops_per_param_token, out)
        elif args.method == "overtrain":
            from gigatron.scaling import overtrain

            fitted = overtrain.fit_overtrain(data, args.flops_per_param_token)
            samples = (overtrain.bootstrap_overtrain(data, fitted, args.bootstrap, args.seed,
                                                     progress=lambda done, total: log(f"[bootstrap] {done}/{total} refits"))
                       if args.bootstrap else np.empty((0, 4)))
            result.update(params=fitted.values(), rmse=fitted.rmse, names=list(overtrain.NAMES),
                          intervals=_interval(samples), samples=samples.tolist())
        else:
            if args.method == "isoflop":
                fitted = isoflop.fit_isoflop(data, args.flops_per_param_token, args.budget_tolerance)
                samples = (isoflop.bootstrap_isoflop(data, args.bootstrap, args.flops_per_param_token,
                                                     args.budget_tolerance, args.seed)
                           if args.bootstrap else np.empty((0, 4)))
                plots.isoflop_plot(data, fitted, out / "isoflop.png")
            else:
                if not data.curves:
                    raise ScalingDataError("--method envelope needs --runs (it reads training curves)")
                fitted = isoflop.fit_envelope(data.curves, args.flops_per_param_token)
                samples = (isoflop.bootstrap_envelope(data.curves, args.bootstrap, args.flops_per_param_token,
                                                      args.seed) if args.bootstrap else np.empty((0, 4)))
            result.update(params=fitted.values(), names=["a", "c_n", "b", "c_d"], intervals=_interval(samples),
                          samples=samples.tolist(), budgets=fitted.budgets.tolist(), n_opt=fitted.n_opt.tolist(),
                          kept_bootstrap_samples=len(samples))
            plots.frontier_plot(fitted, samples, args.method, out / "frontier.png")
    result["seconds"] = time.perf_counter() - started
    (out / "fit.json").write_text(json.dumps(result, indent=1))
    (out / "fit.md").write_text(markdown_table(result))
    log(markdown_table(result))
    return result


def select_command(args: argparse.Namespace, log=_print_now) -> dict[str, Any]:
    """Fit each form on the models below --holdout-above, score it on the others; print and write the table."""
    from threadpoolctl import threadpool_limits

    from gigatron.scaling import points as pts
    from gigatron.scaling.selection import markdown, select

    data = pts.read_csv(args.csv, args.n_col, args.d_col, args.c_col, args.loss_col)
    forms = tuple(f.strip() for f in args.forms.split(",") if f.strip())
    started = time.perf_counter()
    with threadpool_limits(limits=1):
        result = select(data, args.holdout_above <= data.N, forms, args.bootstrap, args.seed, args.starts,
                        args.flops_per_param_token, log)
    result["seconds"] = time.perf_counter() - started
    table = markdown(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "select.json").write_text(json.dumps(result, indent=1))
        (out / "select.md").write_text(table)
    log(table)
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """The fit as a Markdown table: value and 95% bootstrap interval of every parameter."""
    lines = [f"**{result['method']}** fit of {result.get('n_points')} points from `{result.get('source')}` "
             f"({result.get('bootstrap_samples')} bootstrap resamples)", "", "| parameter | value | 95% interval |",
             "|---|---|---|"]
    intervals = result.get("intervals") or []
    for i, name in enumerate(result["names"]):
        span = f"({intervals[i][0]:.4g}, {intervals[i][1]:.4g})" if intervals else "—"
        lines.append(f"| {name} | {result['params'][name]:.4g} | {span} |")
    if "allocation" in result:
        alloc, spans = result["allocation"], result.get("allocation_intervals") or []
        for i, name in enumerate(("a", "b")):
            span = f"({spans[i][0]:.4g}, {spans[i][1]:.4g})" if spans else "—"
            lines.append(f"| {name} (N_opt ∝ C^a, D_opt ∝ C^b) | {alloc[name]:.4g} | {span} |")
    return "\n".join(lines) + "\n"


def predict(fit: dict[str, Any], compute: float | None = None, params: float | None = None,
            tokens: float | None = None, x: float | None = None) -> dict[str, Any]:
    """Point predictions and 95% intervals (over the bootstrap samples) from a fit.json's content."""
    from gigatron.scaling import parametric

    method, samples = fit["method"], np.array(fit.get("samples") or [])
    names = fit["names"]
    rows = [dict(zip(names, s, strict=True)) for s in samples]

    def spread(values: list[float]) -> list[float] | None:
        return np.percentile(values, [2.5, 97.5]).tolist() if values else None

    out: dict[str, Any] = {}
    if method == "error":
        if x is None:
            raise ScalingDataError("predict from an error fit needs --x (a loss)")
        from gigatron.scaling.overtrain import error_law

        out["error"], out["error_interval"] = float(error_law(fit["params"], x)), spread(
            [float(error_law(r, x)) for r in rows])
        return out
    if method == "overtrain":
        if params is None or tokens is None:
            raise ScalingDataError("predict from an overtrain fit needs --params and --tokens")
        from gigatron.scaling.overtrain import law as overtrain_law

        k = fit.get("flops_per_param_token", 6.0)
        out["loss"] = float(overtrain_law(fit["params"], params, tokens, k))
        out["loss_interval"] = spread([float(overtrain_law(r, params, tokens, k)) for r in rows])
        return out
    if method == "power":
        if x is None and params is None:
            raise ScalingDataError("predict from a power fit needs --x (or --params)")
        value = x if x is not None else params
        law = lambda p: p["E"] + p["A"] * value ** (-p["alpha"])  # noqa: E731
        out["y"], out["y_interval"] = law(fit["params"]), spread([law(r) for r in rows])
        return out
    k = fit.get("flops_per_param_token", 6.0)
    if method == "parametric":
        law = lambda p, n, d: p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]  # noqa: E731
        if compute is not None:
            n_opt, d_opt = parametric.optimal_n_d(fit["params"], compute, k)
            per = [parametric.optimal_n_d(r, compute, k) for r in rows]
            out.update(N_opt=n_opt, D_opt=d_opt, loss=law(fit["params"], n_opt, d_opt),
                       N_opt_interval=spread([p[0] for p in per]), D_opt_interval=spread([p[1] for p in per]),
                       loss_interval=spread([law(r, *p) for r, p in zip(rows, per, strict=True)]))
        elif params is not None and tokens is not None:
            out.update(loss=law(fit["params"], params, tokens),
                       loss_interval=spread([law(r, params, tokens) for r in rows]))
        else:
            raise ScalingDataError("predict from a parametric fit needs --compute, or --params and --tokens")
        return out
    if compute is None:
        raise ScalingDataError(f"predict from an {method} fit needs --compute")
    n_law = lambda p: float(np.exp(p["c_n"]) * compute ** p["a"])  # noqa: E731
    d_law = lambda p: float(np.exp(p["c_d"]) * compute ** p["b"])  # noqa: E731
    out.update(N_opt=n_law(fit["params"]), D_opt=d_law(fit["params"]), N_opt_interval=spread([n_law(r) for r in rows]),
               D_opt_interval=spread([d_law(r) for r in rows]))
    return out


def run(args: argparse.Namespace) -> int:
    """Dispatch; bad input exits 2 naming the file, row or column."""
    try:
        if args.scaling_command == "fit":
            fit_command(args)
        elif args.scaling_command == "select":
            select_command(args)
        else:
            path = Path(args.fit)
            if not path.is_file():
                raise ScalingDataError(f"{path}: no such fit.json")
            result = predict(json.loads(path.read_text()), args.compute, args.params, args.tokens, args.x)
            print(json.dumps(result, indent=1))
    except ScalingDataError as exc:
        print(f"gigatron scaling: {exc}", file=sys.stderr)
        return 2
    return 0
