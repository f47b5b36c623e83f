"""`train.compile` on the CPU: training-step speed of compiled layers against eager, per family.

Each family's model is built twice from the same seed (one eager, one with `apply_compile`, the
trainer's regional compilation) and trained with AdamW on the same random batches, in one process;
timed rounds alternate the two so machine drift hits both alike. Reported: the compile time (the
first step's extra seconds: dynamo, AOT autograd and inductor for forward and backward), the median
step time of each, their ratio, MFU (the family's `flops_per_token`, as the trainer logs it: PaLM's
6N + attention, plus the SSD's own FLOPs for Mamba-2 layers, against the measured fp32 matmul peak),
and the largest relative loss difference over the timed steps.

    python benchmarks/compile_speed.py [--families gpt,hybrid,...] [--steps 8] [--rounds 3] \\
        [--recompute none|selective|full] [--threads 2]

Sizes are the smoke configs widened to hidden 256 and sequence 512 (see FAMILIES): large enough
that kernels dominate Python overhead, small enough for 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.config import load_config  # noqa: E402
from gigatron.models.layers.compile import apply_compile  # noqa: E402
from gigatron.models.layers.factory import LayerFactory  # noqa: E402
from gigatron.models.layers.init import initialize_parameters  # noqa: E402
from gigatron.models.layers.recompute import apply_recompute  # noqa: E402
from gigatron.models.registry import build_model, get_model_spec  # noqa: E402
from gigatron.pretrain.peak_flops import measured_matmul_flops  # noqa: E402

WIDE = ["model.hidden_size=256", "data.seq_len=512"]
FAMILIES = {
    "gpt": ("gpt/smoke.yaml", [*WIDE, "model.num_heads=8", "model.num_kv_heads=4", "model.ffn_hidden_size=768"]),
    "hybrid": ("hybrid/smoke.yaml", [*WIDE, "model.num_heads=8", "model.num_kv_heads=4",
                                     "model.ffn_hidden_size=768"]),
    "mamba2": ("hybrid/smoke.yaml", [*WIDE, "model.family=mamba2", "model.pattern=MMMM", "model.num_layers=4"]),
    "mamba": ("hybrid/smoke.yaml", [*WIDE, "model.family=mamba", "model.pattern=MMMM", "model.num_layers=4"]),
    "tokenformer": ("tokenformer/smoke.yaml", [*WIDE, "model.num_heads=8"]),
    "matformer": ("matformer/smoke.yaml", [*WIDE, "model.num_heads=8", "model.num_kv_heads=4",
                                           "model.ffn_hidden_size=1024"]),
}
RECOMPUTE = {"none": None, "selective": {"granularity": "selective", "modules": ["core_attn", "mlp", "mamba"]},
             "full": {"granularity": "full"}}


class Side:
    """One model, its optimizer and a step function."""

    def __init__(self, family: str, compiled: bool, recompute: str, batch: int) -> None:
        config, overrides = FAMILIES[family]
        cfg = load_config(REPO / "configs" / config, overrides)
        self.factory = LayerFactory()
        self.model = build_model(cfg.model, self.factory)
        initialize_parameters(self.model, 0)
        plan = apply_recompute(self.model, **RECOMPUTE[recompute]) if RECOMPUTE[recompute] else None
        self.plan = apply_compile(self.model, compiled, plan)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(0)
        self.batches = [torch.randint(0, cfg.model.vocab_size, (batch, cfg.data.seq_len + 1), generator=generator)
                        for _ in range(4)]
        self.steps = 0
        self.params = sum(p.numel() for p in self.model.parameters())
        self.flops_per_step = get_model_spec(cfg.model.family).flops_per_token(cfg.model, cfg.data.seq_len) * (
            batch * cfg.data.seq_len)

    def step(self) -> tuple[float, float]:
        tokens = self.batches[self.steps % len(self.batches)]
        self.steps += 1
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.factory.cross_entropy(self.model(tokens[:, :-1]), tokens[:, 1:]).mean()
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - started, loss.item()


def measure(family: str, steps: int, rounds: int, recompute: str, batch: int) -> dict:
    eager, compiled = Side(family, False, recompute, batch), Side(family, True, recompute, batch)
    first_eager, _ = eager.step()
    first_compiled, _ = compiled.step()
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    worst = 0.0
    for _ in range(rounds):
        for name, side in (("eager", eager), ("compiled", compiled)):
            for _ in range(steps):
                seconds, _ = side.step()
                times[name].append(seconds)
    # The same steps on the same batches from the same weights: compare the losses step by step.
    check_e, check_c = Side(family, False, recompute, batch), Side(family, True, recompute, batch)
    for _ in range(3):
        (_, a), (_, b) = check_e.step(), check_c.step()
        worst = max(worst, abs(a - b) / abs(a))
    median_e, median_c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    peak = measured_matmul_flops()
    return {"mfu_eager": eager.flops_per_step / median_e / peak, "mfu_compiled": eager.flops_per_step / median_c / peak,
            "family": family, "params_m": eager.params / 1e6, "compile_s": first_compiled - first_eager,
            "eager_ms": median_e * 1e3, "compiled_ms": median_c * 1e3, "speedup": median_e / median_c,
            "loss_rel_diff": worst, "units": compiled.plan.describe()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--recompute", choices=list(RECOMPUTE), default="none")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"recompute {args.recompute}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}")
    print(f"fp32 matmul peak {measured_matmul_flops() / 1e9:.0f} GFLOP/s")
    print("| family | params | compile s | eager ms/step | compiled ms/step | speedup | MFU eager | MFU compiled "
          "| max loss rel diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for family in args.families.split(","):
        r = measure(family, args.steps, args.rounds, args.recompute, args.batch)
        print(f"| {r['family']} | {r['params_m']:.1f}M | {r['compile_s']:.1f} | {r['eager_ms']:.0f} | "
              f"{r['compiled_ms']:.0f} | {r['speedup']:.2f}x | {r['mfu_eager']:.0%} | {r['mfu_compiled']:.0%} | "
              f"{r['loss_rel_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
