"""One training step of the gigapixel FIT encoder on the CPU (fp32): peak memory and time by image size.

For each side in --sizes (default 1600, 3200, 6400: 16x16 patches -> 10K, 40K, 160K tokens), a
fresh process builds the encoder of configs/fit/gigapixel.yaml with AdamW, reads one image through
the training data path (the bundled shapes set scaled to side², uint8), and runs forward, loss,
backward and the optimizer step. Peak resident memory (ru_maxrss) and the step time are recorded,
with the process's size before the image exists. The memory growth exponent is the slope of
log(peak - baseline) against log(tokens).

Beside it, a plain ViT of the same width and depth (all layers attend over all tokens, one group)
with the attention scores materialised (PyTorch's math attention, as in common ViT code) is
measured at small sizes and its memory fitted as a + b·L + c·L²; the fit gives the memory it would
need at the gigapixel sizes (computed, not run).

    python benchmarks/fit_gigapixel.py [--sizes 1600 3200 6400] [--out docs/images/fit_gigapixel.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "fit" / "gigapixel.yaml"
VIT_SIZES = (256, 384, 512, 640)
GIB = 1024 ** 3


def measure(mode: str, size: int) -> dict:
    """One step in a fresh process; returns its measurements."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        # A fixed mmap threshold returns freed tensors to the OS at once, so the peak resident size
        # tracks live tensors rather than allocator slack.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--size", str(size), "--result", str(result)],
                              cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} {size}: {proc.stderr[-3000:]}")
        return json.loads(result.read_text())


def _run_config(mode: str, size: int):
    from gigatron.config import load_config
    from gigatron.models.layers.fit_blocks import parse_layers

    cfg = load_config(CONFIG)
    if mode == "vit":
        model = cfg.model
        depth = sum(local + global_ for local, global_ in parse_layers(model.layers))
        model.layers = f"({depth})"
        model.group_size = size // model.patch_size  # one group: every layer attends over all tokens
        cfg.train.recompute = "none"
    return cfg


def worker(mode: str, size: int, result: Path) -> None:
    import resource
    import time

    import torch
    import torch.nn.functional as F
    from gigatron.images.default_images import ensure_default_images
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gigatron.data.image_shards import load_image_dataset
    from gigatron.data.image_source import ImageShardSource
    from gigatron.models.fit.model import FITEncoder
    from gigatron.models.layers.factory import LayerFactory
    from gigatron.models.layers.init import initialize_parameters
    from gigatron.models.layers.recompute import apply_recompute_config

    torch.manual_seed(0)
    run = _run_config(mode, size)
    cfg = run.model
    model = FITEncoder(cfg, LayerFactory())
    initialize_parameters(model, seed=0)
    apply_recompute_config(model, run.train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = sum(p.numel() for p in model.parameters())
    classes = load_config_classes()
    source = ImageShardSource(load_image_dataset(ensure_default_images(count=16)), size, classes)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    sample = source[0]
    image, label = torch.from_numpy(sample["image"])[None], torch.tensor([int(sample["label"])])
    loaded = time.perf_counter()
    # The ViT baseline materialises attention scores as common ViT code does; FIT keeps PyTorch's
    # default kernels (flash attention on the CPU), as in training.
    backend = [SDPBackend.MATH] if mode == "vit" else [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(backend):
        loss = F.cross_entropy(model(image), label)
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    done = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result.write_text(json.dumps({
        "mode": mode, "size": size, "tokens": (size // cfg.patch_size) ** 2, "params": params,
        "groups": (size // (cfg.patch_size * cfg.group_size)) ** 2, "loss": float(loss.detach()),
        "baseline_gib": baseline / GIB, "peak_gib": peak / GIB, "step_gib": (peak - baseline) / GIB,
        "load_s": loaded - start, "step_s": done - loaded,
    }))


def load_config_classes() -> list[str]:
    from gigatron.config import load_config

    return load_config(CONFIG).images.classes


def growth_exponent(rows: list[dict]) -> float:
    """Slope of log(step memory) against log(tokens)."""
    x = np.log([r["tokens"] for r in rows])
    y = np.log([r["step_gib"] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def vit_fit(rows: list[dict]) -> np.ndarray:
    """Least-squares (a, b, c) of step memory (GiB) = a + b·L + c·L² over the measured ViT steps."""
    tokens = np.array([r["tokens"] for r in rows], dtype=np.float64)
    design = np.stack([np.ones_like(tokens), tokens, tokens ** 2], axis=1)
    return np.linalg.lstsq(design, np.array([r["step_gib"] for r in rows]), rcond=None)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1600, 3200, 6400])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "fit_gigapixel.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.size, args.result)
        return
    sys.path.insert(0, str(REPO))
    fit_rows = []
    for size in args.sizes:
        fit_rows.append(measure("fit", size))
        print(json.dumps(fit_rows[-1]), flush=True)
    vit_rows = []
    for size in VIT_SIZES:
        vit_rows.append(measure("vit", size))
        print(json.dumps(vit_rows[-1]), flush=True)
    a, b, c = vit_fit(vit_rows)
    print(f"\nFIT encoder, one training step (fp32, CPU), {fit_rows[0]['params'] / 1e6:.1f}M parameters; "
          f"plain ViT of the same width/depth: step memory = {a:.3f} + {b:.3e}·L + {c:.3e}·L² GiB (fit over "
          f"{', '.join(str(r['tokens']) for r in vit_rows)} tokens)")
    print("| image | tokens | groups | FIT peak RSS | FIT step memory | FIT step time | ViT step memory (computed) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in fit_rows:
        vit = a + b * r["tokens"] + c * r["tokens"] ** 2
        print(f"| {r['size']}² | {r['tokens']:,} | {r['groups']:,} | {r['peak_gib']:.2f} GiB | {r['step_gib']:.2f} GiB | "
              f"{r['step_s']:.1f} s | {vit:,.0f} GiB |")
    exponent = growth_exponent(fit_rows) if len(fit_rows) > 1 else math.nan
    print(f"\nmemory growth exponent (step memory vs tokens): {exponent:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"fit": fit_rows, "vit": vit_rows, "vit_fit_gib": [a, b, c],
                                    "growth_exponent": exponent}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
