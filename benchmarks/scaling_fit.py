"""Time of the scaling-law fits on the Chinchilla points (240 after dropping the 5 highest losses).

Targets: a full parametric fit (L-BFGS from all 4,500 grid starts, the default) in under 30 s on 2
cores; 1,000 bootstrap refits in under 5 minutes. Also the fit from the best-scoring 256 starts.

    python benchmarks/scaling_fit.py [--bootstrap 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.scaling import parametric  # noqa: E402
from gigatron.scaling.points import read_csv  # noqa: E402

DATA = REPO / "tests" / "data" / "chinchilla_svg_extracted_data.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    points = read_csv(DATA).drop_highest_losses(5)
    print("| step | seconds | result |")
    print("|---|---|---|")
    started = time.perf_counter()
    fitted = parametric.fit(points, workers=args.workers)
    seconds = time.perf_counter() - started
    values = ", ".join(f"{k}={v:.4g}" for k, v in fitted.values().items())
    print(f"| parametric fit, all 4,500 starts | {seconds:.1f} | {values} |", flush=True)
    started = time.perf_counter()
    quick = parametric.fit(points, workers=args.workers, starts=256)
    values = ", ".join(f"{k}={v:.4g}" for k, v in quick.values().items())
    print(f"| parametric fit, best 256 of 4,500 starts | {time.perf_counter() - started:.1f} | {values} |", flush=True)
    started = time.perf_counter()
    samples = parametric.bootstrap(points, fitted, args.bootstrap, workers=args.workers)
    seconds = time.perf_counter() - started
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    spans = ", ".join(f"{k} ({lo:.4g}, {hi:.4g})" for k, lo, hi in zip(parametric.NAMES, low, high, strict=True))
    print(f"| {args.bootstrap} bootstrap refits | {seconds:.1f} | 95%: {spans} |")


if __name__ == "__main__":
    main()
