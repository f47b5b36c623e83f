"""Activation recomputation per family: peak memory and step time with none / selective / full.

One process, fp32 on the CPU. For each family a model of a few million parameters runs forward and
backward on one micro-batch under each setting. Peak memory is counted from live tensors
(torch's MemTracker: parameters, gradients, activations and temporaries; not process RSS), and the
activation part is reported separately. Step times are medians of `--rounds` rounds in which the
settings alternate, so machine drift hits them alike; the table gives ratios to `none` measured in
this one run.

    .venv/bin/python benchmarks/recompute.py            # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.config.loader import load_config
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.layers.recompute import apply_recompute
from gigatron.models.registry import build_model

MIB = 2**20
SETTINGS = {
    "none": {"granularity": "none"},
    "selective core_attn": {"granularity": "selective", "modules": ["core_attn"]},
    "selective all": {"granularity": "selective", "modules": ["core_attn", "mlp", "layernorm", "mamba"]},
    "full": {"granularity": "full"},
}
LM = {  # (config, overrides): widths where compute, not Python overhead, dominates a step
    "gpt": ("configs/gpt/smoke.yaml", ["model.hidden_size=256", "model.num_layers=4", "model.num_heads=4"]),
    "hybrid": ("configs/hybrid/smoke.yaml", ["model.hidden_size=256", "model.num_layers=8", "model.num_heads=4"]),
    "mamba2": ("configs/hybrid/smoke.yaml", ["model.family=mamba2", "model.hidden_size=256", "model.num_layers=4",
                                             "model.pattern=MMMM"]),
    "mamba": ("configs/hybrid/smoke.yaml", ["model.family=mamba", "model.hidden_size=256", "model.num_layers=4",
                                            "model.pattern=MMMM"]),
    "tokenformer": ("configs/tokenformer/smoke.yaml", ["model.hidden_size=256", "model.num_layers=4"]),
    "matformer": ("configs/matformer/smoke.yaml", ["model.hidden_size=256", "model.num_layers=4"]),
}


def _lm(name: str, batch: int, seq: int) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    path, overrides = LM[name]
    cfg = load_config(path, overrides)
    factory = LayerFactory()
    model = build_model(cfg.model, factory)
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    return model, lambda: factory.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).mean()


def _fit(batch: int) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    from gigatron.models.fit.model import FITEncoder

    cfg = load_config("configs/fit/smoke.yaml", ["model.hidden_size=128", "model.layers=(2)2(2)2(2)"])
    model = FITEncoder(cfg.model, LayerFactory())
    images = torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(batch, dtype=torch.long)
    return model, lambda: F.cross_entropy(model(images), labels)


def _t2i(batch: int) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    from gigatron.models.t2i.model import T2IModel

    cfg = load_config("configs/t2i/smoke.yaml", ["model.hidden_size=256", "model.num_layers=4", "model.pack_tokens=256"])
    model = T2IModel(cfg.model, LayerFactory())
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(batch, cfg.model.channels, 64, 64, generator=generator)
    captions = torch.randint(0, cfg.model.vocab_size, (batch, cfg.model.caption_len), generator=generator)
    t = torch.rand(batch, generator=generator)
    return model, lambda: model(x_t, t, {"caption": captions}).square().mean()


def build(family: str, setting: dict, batch: int, seq: int) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    """The family's model with `setting` applied, and a closure computing one micro-batch's loss."""
    model, loss = _fit(batch) if family == "fit" else _t2i(batch) if family == "t2i" else _lm(family, batch, seq)
    initialize_parameters(model, 0)
    apply_recompute(model, **setting)
    return model, loss


def peak_memory(model: nn.Module, loss: Callable[[], torch.Tensor]) -> dict[str, float]:
    """Peak live tensor MiB during forward + backward: total and the activations within it."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        loss().backward()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    activations = sum(v for k, v in peak.items() if getattr(k, "value", k) in ("Activation", "Temp"))
    return {"peak_mib": peak["Total"] / MIB, "activation_mib": activations / MIB}


def step_seconds(model: nn.Module, loss: Callable[[], torch.Tensor]) -> float:
    """One forward + backward."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss().backward()
    return time.perf_counter() - start


def measure(family: str, batch: int, seq: int, rounds: int) -> list[dict]:
    """Every setting of `SETTINGS` for one family."""
    built = {name: build(family, s, batch, seq) for name, s in SETTINGS.items()}
    rows = {name: {"family": family, "setting": name, **peak_memory(*pair)} for name, pair in built.items()}
    for pair in built.values():
        step_seconds(*pair)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(rounds):
        for name, pair in built.items():
            times[name].append(step_seconds(*pair))
    base = rows["none"]
    base_time = statistics.median(times["none"])
    for name, row in rows.items():
        row["step_s"] = statistics.median(times[name])
        row["time_ratio"] = row["step_s"] / base_time
        row["activation_ratio"] = row["activation_mib"] / base["activation_mib"]
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=[*LM, "fit", "t2i"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    print("| family | setting | peak MiB | activations MiB | activations vs none | step s | time vs none |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for family in args.families:
        for row in measure(family, args.batch, args.seq, args.rounds):
            rows.append(row)
            print(f"| {row['family']} | {row['setting']} | {row['peak_mib']:.1f} | {row['activation_mib']:.1f} | "
                  f"{row['activation_ratio']:.2f} | {row['step_s']:.3f} | {row['time_ratio']:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
