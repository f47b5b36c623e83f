"""Depth vs width: a CPU-scale scaling study of the text-to-image transformer on the shapes set.

From one base (hidden 64, 2 DiT blocks; the smoke config's data, text encoder and schedule), a
depth family adds blocks (2, 4, 6, 8 at width 64) and a width family adds channels (64, 96, 112, 128
at 2 blocks): the same parameter range, the same images (train.steps x batch) for every model.
Each model is trained with `gigatron pretrain`, scored with `gigatron align` on the held-out
captions (colour, shape, position accuracy) and its last validation loss read from its metrics;
then each family's validation loss and colour misalignment (1 - the main object's colour accuracy) are fitted
against the denoiser's parameters with `gigatron scaling fit --method power` (y = E + A x^-alpha, E >= 0:
over a ~3x size range an unbounded floor runs to -inf).
Writes docs/images/t2i_scaling.{csv,json,png} and prints a Markdown table.

    python benchmarks/t2i_scaling.py [--steps 3000] [--images 128] [--parallel 2] [--reuse]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "t2i" / "smoke.yaml"
FAMILIES = {
    "depth": [(64, 2), (64, 4), (64, 6), (64, 8)],
    "width": [(64, 2), (96, 2), (112, 2), (128, 2)],
}


def gigatron(*args: str, threads: int | None = None) -> None:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run([sys.executable, "-m", "gigatron", *args], cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"gigatron {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def denoiser_params(hidden: int, layers: int) -> tuple[int, int]:
    """(all parameters, parameters outside the text encoder) of the smoke config at this size."""
    sys.path.insert(0, str(REPO))
    from gigatron.config import load_config
    from gigatron.models.layers.factory import LayerFactory
    from gigatron.models.t2i.model import T2IModel

    cfg = load_config(CONFIG).model
    cfg.hidden_size, cfg.num_layers = hidden, layers
    model = T2IModel(cfg, LayerFactory(device="meta"))
    total = sum(p.numel() for p in model.parameters())
    return total, total - sum(p.numel() for p in model.text.parameters())


def run_one(work: Path, hidden: int, layers: int, steps: int, images: int, reuse: bool, threads: int) -> dict:
    run = work / f"h{hidden}-l{layers}"
    if not (reuse and (run / "align" / "alignment.json").is_file()):
        gigatron("pretrain", "--config", str(CONFIG), "--set", f"output_dir={run}", "--set", f"train.steps={steps}",
                 "--set", f"train.warmup_steps={steps // 20}", "--set", f"train.eval_interval={steps}",
                 "--set", "train.eval_batches=4", "--set", f"model.hidden_size={hidden}",
                 "--set", f"model.num_layers={layers}", "--set", "checkpoint.resume=none",
                 "--set", "checkpoint.overwrite=true",
                 "--set", "logging.progress_bar=false", "--set", "logging.tensorboard=false", threads=threads)
        gigatron("align", str(run), "--images", str(images), "--steps", "40", "--cfg", "6", "--out", str(run / "align"),
                 threads=threads)
    alignment = json.loads((run / "align" / "alignment.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r["loss"] for r in records if r["kind"] == "valid"][-1]
    train_s = sum(r["step_time_s"] for r in records if r["kind"] == "train")
    total, denoiser = denoiser_params(hidden, layers)
    return {"hidden": hidden, "layers": layers, "params": total, "denoiser_params": denoiser,
            "flops_per_image": alignment["flops_per_image"], "valid_loss": valid,
            "colour_accuracy": alignment["colour_accuracy"],
            "object_colour_accuracy": alignment["object_colour_accuracy"],
            "misalignment": 1 - alignment["object_colour_accuracy"],
            "shape_accuracy": alignment["shape_accuracy"], "position_accuracy": alignment["position_accuracy"],
            "chance_object_colour": alignment["chance"]["object_colour_accuracy"], "train_seconds": train_s}


def fit(rows: list[dict], family: str, y: str, out: Path) -> dict:
    path = out / f"{family}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    target = out / f"fit-{family}-{y}"
    gigatron("scaling", "fit", "--method", "power", "--csv", str(path), "--x-col", "denoiser_params",
             "--y-col", y, "--e-min", "0", "--out", str(target), "--bootstrap", "200")
    return json.loads((target / "fit.json").read_text())


def plot(results: dict, fits: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, y, label in ((axes[0], "valid_loss", "validation loss (flow MSE)"),
                         (axes[1], "misalignment", "1 - main object's colour accuracy")):
        for family, marker in (("depth", "o"), ("width", "s")):
            rows = results[family]
            x = np.array([r["denoiser_params"] for r in rows], dtype=float)
            ax.plot(x, [r[y] for r in rows], marker, label=f"{family} (measured)")
            p = fits[family][y]["params"]
            grid = np.geomspace(x.min(), x.max(), 50)
            ax.plot(grid, p["E"] + p["A"] * grid ** (-p["alpha"]), "-", alpha=0.6,
                    label=f"{family}: {p['E']:.3g} + {p['A']:.3g}·N^-{p['alpha']:.2f}")
        ax.set_xscale("log")
        ax.set_xlabel("denoiser parameters N")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--work", type=Path, help="run directory (default runs/t2i-scaling-STEPS)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs of an earlier invocation")
    parser.add_argument("--parallel", type=int, default=2,
                        help="models trained at once, sharing the cores (small models use threads poorly: on 2 "
                             "cores two 1-thread runs give 1.46x the throughput of one 2-thread run)")
    args = parser.parse_args()
    args.work = args.work or REPO / "runs" / f"t2i-scaling-{args.steps}"
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    sizes = sorted({size for family in FAMILIES.values() for size in family},
                   key=lambda size: (-size[1], -size[0]))  # the longest runs first, to finish together
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {size: pool.submit(run_one, args.work, *size, args.steps, args.images, args.reuse, threads)
                   for size in sizes}
        done = {}
        for size, future in futures.items():
            done[size] = future.result()
            print(json.dumps(done[size]), flush=True)
    results = {family: [done[size] for size in family_sizes] for family, family_sizes in FAMILIES.items()}
    fit_dir = args.work / "fits"
    fit_dir.mkdir(parents=True, exist_ok=True)
    fits = {family: {y: fit(rows, family, y, fit_dir) for y in ("valid_loss", "misalignment")}
            for family, rows in results.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "t2i_scaling.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["family", *results["depth"][0]])
        writer.writeheader()
        for family, rows in results.items():
            writer.writerows({"family": family, **r} for r in rows)
    summary = {f: {y: {k: fits[f][y][k] for k in ("params", "intervals", "rmse")} for y in fits[f]} for f in fits}
    (args.out / "t2i_scaling.json").write_text(json.dumps({"results": results, "fits": summary}, indent=1) + "\n")
    plot(results, fits, args.out / "t2i_scaling.png")
    print("\n| family | hidden | blocks | denoiser params | GFLOPs/image | valid loss | object colour | colour at cell "
          "| shape | position | train time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for family, rows in results.items():
        for r in rows:
            print(f"| {family} | {r['hidden']} | {r['layers']} | {r['denoiser_params']:,} | "
                  f"{r['flops_per_image'] / 1e9:.2f} | {r['valid_loss']:.4f} | {r['object_colour_accuracy']:.3f} | "
                  f"{r['colour_accuracy']:.3f} | "
                  f"{r['shape_accuracy']:.3f} | {r['position_accuracy']:.3f} | {r['train_seconds']:.0f} s |")
    print("\n| family | metric | E | A | alpha | 95% interval of alpha |")
    print("|---|---|---:|---:|---:|---|")
    for family in fits:
        for y, result in fits[family].items():
            p = result["params"]
            interval = result["intervals"][2] if result["intervals"] else ["", ""]
            print(f"| {family} | {y} | {p['E']:.4g} | {p['A']:.4g} | {p['alpha']:.3f} | "
                  f"[{interval[0]:.3g}, {interval[1]:.3g}] |")


if __name__ == "__main__":
    main()
