"""Why do MatFormer's large submodels trail independently trained models? A study over seeds.

For every seed: ordinary models at FFN widths 1/4, 1/2 and 1 of configs/matformer/small.yaml, and
one MatFormer per weighting of the granularities (`matformer.weights`, sum mode) or per sampling
distribution (`matformer.probabilities`, sample mode), all on the same tokens (same seed, data
order and steps). Each MatFormer granularity is compared with the independent model of its width
on the same validation batches; the table gives the gap's mean and spread over seeds, so that a
difference can be told from seed noise. Two runs train at a time, one thread each.

    python benchmarks/matformer_study.py --seeds 3 --steps 600 \\
        --variant equal=sum:1,1,1,1 --variant full-heavy=sum:1,1,1,3 --variant sample=sample:1,1,1,1
    python benchmarks/matformer_study.py --seeds 2 --steps 600 --set model.hidden_size=128 \\
        --set model.ffn_hidden_size=512 --out runs/matformer-study-h128   # a smaller model, for the trend
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.matformer import CONFIG, INDEPENDENT, pretrain  # noqa: E402
from gigatron.checkpoint.reader import load_checkpoint_model  # noqa: E402
from gigatron.config import load_config  # noqa: E402
from gigatron.inference.lm_eval import lm_loss, validation_batches  # noqa: E402
from gigatron.models.layers.nested_ffn import ffn_granularity  # noqa: E402


def parse_variant(text: str) -> tuple[str, str, list[float]]:
    """"name=mode:w1,w2,w3,w4" -> (name, mode, weights)."""
    name, _, spec = text.partition("=")
    mode, _, values = spec.partition(":")
    if not name or mode not in ("sum", "sample") or not values:
        raise SystemExit(f"--variant {text!r}: expected name=sum:w,w,w,w or name=sample:p,p,p,p")
    return name, mode, [float(v) for v in values.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=None, help="train.lr for every run (default: the config's)")
    parser.add_argument("--variant", action="append", default=None, metavar="NAME=MODE:W,W,W,W",
                        help="a MatFormer training setting (repeatable); default: equal=sum:1,1,1,1")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (repeatable), e.g. model.hidden_size=128 for the "
                             "model-size trend; the independent models' FFN widths follow model.ffn_hidden_size")
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "matformer-study")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in (args.variant or ["equal=sum:1,1,1,1"])]
    # The config's 30 warmup steps, or a twentieth of a shorter run.
    common = [f"train.steps={args.steps}", f"train.warmup_steps={min(30, max(1, args.steps // 20))}",
              "train.eval_interval=0", "checkpoint.interval=0"]
    if args.lr is not None:
        common += [f"train.lr={args.lr}", f"train.min_lr={args.lr / 10}"]
    common += args.overrides
    d_ff = load_config(CONFIG, args.overrides).model.ffn_hidden_size
    widths = {g: int(g * d_ff) for g in INDEPENDENT}
    jobs: list[tuple[Path, list[str]]] = []
    for seed in range(args.seeds):
        base = [*common, f"train.seed={1234 + seed}"]
        for g, width in widths.items():
            jobs.append((args.out / f"seed{seed}" / f"independent-{g:g}",
                         [*base, "model.matformer=null", f"model.ffn_hidden_size={width}"]))
        for name, mode, values in variants:
            key = "weights" if mode == "sum" else "probabilities"
            shares = [v / sum(values) for v in values] if mode == "sample" else values  # probabilities sum to 1
            jobs.append((args.out / f"seed{seed}" / f"matformer-{name}",
                         [*base, f"matformer.mode={mode}", f"matformer.{key}=[{','.join(map(str, shares))}]"]))
    # Longest first (a sum-mode MatFormer trains every granularity each step), so that the two
    # workers finish together instead of one waiting on a long run started last.
    jobs.sort(key=lambda job: not any(o.startswith("matformer.mode=sum") for o in job[1]))
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        for (out, _), seconds in zip(jobs, pool.map(lambda job: pretrain(*job, threads=1), jobs), strict=True):
            print(f"{out.relative_to(args.out)}: {seconds:.0f} s", flush=True)
    print(f"trained {len(jobs)} runs in {time.perf_counter() - started:.0f} s", flush=True)

    gaps: dict[str, dict[float, list[float]]] = {name: {g: [] for g in INDEPENDENT} for name, _, _ in variants}
    losses: dict[str, dict[str, float]] = {}
    for seed in range(args.seeds):
        folder = args.out / f"seed{seed}"
        independent = {}
        for g in INDEPENDENT:
            cfg, model = load_checkpoint_model(folder / f"independent-{g:g}")
            independent[g] = lm_loss(model, validation_batches(cfg, args.eval_batches))
            losses[f"seed{seed}/independent-{g:g}"] = independent[g]
        for name, _, _ in variants:
            cfg, model = load_checkpoint_model(folder / f"matformer-{name}")
            batches = validation_batches(cfg, args.eval_batches)
            for g in INDEPENDENT:
                with ffn_granularity(model, g):
                    loss = lm_loss(model, batches)
                losses[f"seed{seed}/matformer-{name}@{g:g}"] = loss
                gaps[name][g].append(loss - independent[g])
    (args.out / "study.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                     "losses": losses, "gaps": {n: {str(g): v for g, v in d.items()}
                                                                                for n, d in gaps.items()}}, indent=1))
    print(f"\n{args.seeds} seeds, {args.steps} steps; MatFormer loss − independent loss at equal tokens "
          "(mean ± standard deviation over seeds; target |gap| ≤ 0.03)")
    print("\n| variant | " + " | ".join(f"gap at {g:g}" for g in INDEPENDENT) + " |")
    print("|---|" + "---|" * len(INDEPENDENT))
    for name, mode, values in variants:
        cells = [f"{np.mean(v):+.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.4f}" for v in gaps[name].values()]
        print(f"| {name} ({mode} {values}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
