"""Scaling-law data points (N parameters, D tokens, C FLOPs, loss) from a CSV, a sweep summary or
gigatron run directories, checked so that a bad row is named rather than fitted."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Accepted spellings of each column (first match wins); the sweep summary's names are included.
COLUMNS = {
    "N": ("N", "params", "parameters", "Model Size", "model_size", "n"),
    "D": ("D", "tokens", "Training Tokens", "training_tokens", "d"),
    "C": ("C", "flops", "Training FLOP", "training_flops", "compute", "c"),
    "loss": ("loss", "valid_loss", "final_loss", "L", "y"),
}


class ScalingDataError(ValueError):
    """Unusable input; the message names the file, row or column."""


@dataclass
class Points:
    """Arrays of equal length; D and C are both filled (C = 6 N D when one is missing)."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    loss: np.ndarray
    source: str = ""
    labels: list[str] = field(default_factory=list)
    # Training curves for the envelope method: per run, (compute, loss) pairs in step order.
    curves: list[tuple[float, np.ndarray, np.ndarray]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, index: np.ndarray) -> Points:
        """The points at `index` (used by the bootstrap)."""
        return Points(self.N[index], self.D[index], self.C[index], self.loss[index], self.source)

    def drop_highest_losses(self, count: int) -> Points:
        """Without the `count` highest losses (the Chinchilla replication drops 5 outliers)."""
        if count <= 0:
            return self
        keep = np.sort(np.argsort(self.loss)[:-count])
        return self.subset(keep)


def _pick(header: list[str], kind: str, explicit: str | None, path: Path) -> str | None:
    if explicit:
        if explicit not in header:
            raise ScalingDataError(f"{path}: no column {explicit!r}; columns: {', '.join(header)}")
        return explicit
    return next((name for name in COLUMNS[kind] if name in header), None)


def _number(raw: str, path: Path, row: int, column: str, positive: bool = True) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ScalingDataError(f"{path}: row {row}, column {column!r}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ScalingDataError(f"{path}: row {row}, column {column!r}: {raw!r} is not finite")
    if positive and value <= 0:
        raise ScalingDataError(f"{path}: row {row}, column {column!r}: {value} must be > 0 (logarithms are taken)")
    return value


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and (row number, row) of a CSV; rows are numbered from 2 (the header is row 1), as
    spreadsheets do. Scaling CSVs are small, so they are read whole."""
    if not path.is_file():
        raise ScalingDataError(f"{path}: no such file")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(enumerate(reader, start=2))


def read_csv(path: str | Path, n_col: str | None = None, d_col: str | None = None, c_col: str | None = None,
             loss_col: str | None = None) -> Points:
    """Points from a CSV with a header: N and loss columns, and D or C (the other is C = 6ND). Sweep
    `summary.csv` works as is."""
    path = Path(path)
    header, rows = _csv_rows(path)
    names = {"N": _pick(header, "N", n_col, path), "D": _pick(header, "D", d_col, path),
             "C": _pick(header, "C", c_col, path), "loss": _pick(header, "loss", loss_col, path)}
    for kind in ("N", "loss"):
        if names[kind] is None:
            raise ScalingDataError(f"{path}: no {kind} column; looked for {', '.join(COLUMNS[kind])} "
                                   f"(or name it with --{kind.lower()}-col); columns: {', '.join(header)}")
    if names["D"] is None and names["C"] is None:
        raise ScalingDataError(f"{path}: needs a tokens (D) or compute (C) column; looked for "
                               f"{', '.join(COLUMNS['D'] + COLUMNS['C'])}; columns: {', '.join(header)}")
    values: dict[str, list[float]] = {k: [] for k in names}
    for row_number, row in rows:
        status = row.get("status")
        if status is not None and status != "done":
            continue  # an unfinished sweep task: its loss is not a final loss
        for kind, column in names.items():
            if column is not None:
                values[kind].append(_number(row.get(column, ""), path, row_number, column))
    if not values["loss"]:
        raise ScalingDataError(f"{path}: no data rows")
    return _complete(values, str(path))


def _complete(values: dict[str, list[float]], source: str) -> Points:
    n = np.asarray(values["N"], dtype=float)
    d = np.asarray(values["D"], dtype=float) if values.get("D") else None
    c = np.asarray(values["C"], dtype=float) if values.get("C") else None
    if d is None:
        d = c / (6.0 * n)
    if c is None:
        c = 6.0 * n * d
    return Points(n, d, c, np.asarray(values["loss"], dtype=float), source)


def read_xy(path: str | Path, x_col: str, y_col: str) -> tuple[np.ndarray, np.ndarray]:
    """Two named columns of a CSV (for the generic power law), every value checked."""
    path = Path(path)
    header, rows = _csv_rows(path)
    for column in (x_col, y_col):
        if column not in header:
            raise ScalingDataError(f"{path}: no column {column!r}; columns: {', '.join(header)}")
    xs, ys = [], []
    for row_number, row in rows:
        xs.append(_number(row[x_col], path, row_number, x_col))
        ys.append(_number(row[y_col], path, row_number, y_col, positive=False))
    return np.asarray(xs), np.asarray(ys)


def read_runs(run_dirs: list[str | Path], use_valid: bool = True) -> Points:
    """One point per gigatron run (N from the model spec, D tokens seen, C = FLOPs per token × D,
    loss the last validation loss, else the last training loss) plus each run's training curve."""
    from gigatron.config import load_config
    from gigatron.models.registry import get_model_spec

    values: dict[str, list[float]] = {"N": [], "D": [], "C": [], "loss": []}
    curves = []
    labels = []
    for run_dir in map(Path, run_dirs):
        metrics = run_dir / "metrics.jsonl"
        config = _run_config(run_dir)
        if not metrics.is_file() or config is None:
            raise ScalingDataError(f"{run_dir}: not a gigatron run directory (needs metrics.jsonl and a checkpoint "
                                   "with config.yaml)")
        cfg = load_config(config)
        spec = get_model_spec(type(cfg.model).family)
        per_token = spec.flops_per_token(cfg.model, cfg.data.seq_len)
        train, valid = [], []
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("kind") == "train":
                train.append((record["tokens"], record["loss"]))
            elif record.get("kind") == "valid":
                valid.append((record["step"], record["loss"]))
        if not train:
            raise ScalingDataError(f"{metrics}: no training records")
        tokens = train[-1][0]
        loss = valid[-1][1] if use_valid and valid else train[-1][1]
        values["N"].append(float(spec.num_params(cfg.model)))
        values["D"].append(float(tokens))
        values["C"].append(per_token * tokens)
        values["loss"].append(float(loss))
        curve = np.asarray(train, dtype=float)
        curves.append((float(spec.num_params(cfg.model)), curve[:, 0] * per_token, curve[:, 1]))
        labels.append(run_dir.name)
    points = _complete(values, ", ".join(map(str, run_dirs)))
    points.curves, points.labels = curves, labels
    return points


def _run_config(run_dir: Path) -> Path | None:
    from gigatron.checkpoint.files import list_tags

    tags = list_tags(run_dir / "checkpoints")
    return run_dir / "checkpoints" / tags[-1] / "config.yaml" if tags else None


def read_sweep(sweep_dir: str | Path) -> Points:
    """The finished runs of a `gigatron sweep` (its summary.csv, written by `gigatron sweep summary`)."""
    summary = Path(sweep_dir) / "summary.csv"
    if not summary.is_file():
        raise ScalingDataError(f"{summary}: missing; run `gigatron sweep summary {sweep_dir}` first")
    return read_csv(summary, n_col="params", d_col="tokens", c_col="flops", loss_col="valid_loss")
