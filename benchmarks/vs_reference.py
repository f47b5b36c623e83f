"""gigatron's models against transformers' on one training step: GPT vs LlamaForCausalLM, the Mamba-2
hybrid vs NemotronHForCausalLM (its PyTorch path; mamba-ssm's kernels do not run on the CPU).

Both sides hold the same weights (transformers' copy is made by gigatron's exporter, and the first
step's losses are checked equal), see the same batches, and train with AdamW in fp32. Rounds
alternate the two models so that drift on a shared machine hits both alike; each side's figure is
the median step time over all its rounds. MFU counts 6·N matmul FLOPs (the input embedding, a lookup,
left out), PaLM's 12·h·s attention term per attention layer, and 3× the SSD's own forward FLOPs per
Mamba-2 layer, against the measured fp32 matmul peak of this process (the same numerator for both
sides: it is the model's work, not the implementation's).

    python benchmarks/vs_reference.py [--only gpt,hybrid] [--rounds 5] [--steps 4]
    python benchmarks/vs_reference.py --only gpt --compile     # ours with train.compile (regional)
    python benchmarks/vs_reference.py --only gpt --profile     # torch.profiler tables of both steps
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.checkpoint.hf_export import to_hf_model  # noqa: E402
from gigatron.models.gpt.config import GPTConfig  # noqa: E402
from gigatron.models.hybrid.config import HybridConfig  # noqa: E402
from gigatron.models.layers.compile import apply_compile  # noqa: E402
from gigatron.models.layers.factory import LayerFactory  # noqa: E402
from gigatron.models.layers.init import initialize_parameters  # noqa: E402
from gigatron.models.registry import build_model, get_model_spec  # noqa: E402
from gigatron.pretrain.peak_flops import measured_matmul_flops  # noqa: E402

VOCAB = 2048


def gpt_case() -> tuple[GPTConfig, int, int]:
    """~30M Llama-style GPT (8 × 512, SwiGLU 1536, MHA), seq 512, micro-batch 4."""
    cfg = GPTConfig(vocab_size=VOCAB, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=8, ffn_hidden_size=1536)
    return cfg, 512, 4


def hybrid_case(hidden: int) -> tuple[HybridConfig, int, int]:
    """The `M-M*M-M-` hybrid (4 Mamba-2, 1 attention, 3 MLP layers) at L=2048, 4,096 tokens a step."""
    cfg = HybridConfig(vocab_size=VOCAB, hidden_size=hidden, num_layers=8, pattern="M-M*M-M-", d_state=64,
                       headdim=32 if hidden <= 256 else 64, ngroups=1, chunk_size=128, num_heads=hidden // 32,
                       num_kv_heads=2, ffn_hidden_size=4 * hidden)
    return cfg, 2048, 2


def logits_of(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def make_step(model: torch.nn.Module, batches: list[torch.Tensor]) -> Callable[[int], float]:
    """One AdamW training step on batch i; returns the loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(i: int) -> float:
        ids = batches[i % len(batches)]
        logits = logits_of(model(ids[:, :-1]))
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def timed(step: Callable[[int], float], start: int, steps: int) -> list[float]:
    times = []
    for i in range(start, start + steps):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    return times


def compare(name: str, cfg, seq_len: int, batch: int, rounds: int, steps: int, profile: bool,
            compiled: bool = False) -> None:
    torch.manual_seed(0)
    ours = build_model(cfg, LayerFactory())
    initialize_parameters(ours, 0)
    theirs = to_hf_model(cfg, ours)
    apply_compile(ours, compiled)  # after the copy: compiling changes no parameter or name
    n_params = sum(p.numel() for p in ours.parameters())
    batches = [torch.randint(0, VOCAB, (batch, seq_len + 1)) for _ in range(4)]
    ours_step, theirs_step = make_step(ours, batches), make_step(theirs, batches)
    first_ours, first_theirs = ours_step(0), theirs_step(0)  # warm-up, and the same weights check
    if abs(first_ours - first_theirs) > 1e-4 * abs(first_theirs):
        raise SystemExit(f"{name}: first losses differ ({first_ours} vs {first_theirs}): not the same model")
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            timed(ours_step, 1, 2)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            timed(theirs_step, 1, 2)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return
    ours_times: list[float] = []
    theirs_times: list[float] = []
    ratios = []
    for r in range(rounds):
        a = timed(ours_step, 1 + r * steps, steps)
        b = timed(theirs_step, 1 + r * steps, steps)
        ours_times += a
        theirs_times += b
        ratios.append(statistics.median(b) / statistics.median(a))
    tokens = batch * seq_len
    flops = get_model_spec(cfg.family).flops_per_token(cfg, seq_len) * tokens
    peak = measured_matmul_flops()
    t_ours, t_theirs = statistics.median(ours_times), statistics.median(theirs_times)
    print(f"{name}: {n_params / 1e6:.1f}M parameters, seq {seq_len}, batch {batch}; fp32 matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s")
    label = "gigatron (compiled)" if compiled else "gigatron"
    print(f"  {label:19s} {tokens / t_ours:8,.0f} tok/s  MFU {flops / t_ours / peak:.0%}")
    print(f"  {'transformers':19s} {tokens / t_theirs:8,.0f} tok/s  MFU {flops / t_theirs / peak:.0%}")
    print(f"  ratio {t_theirs / t_ours:.3f}x (per-round: {', '.join(f'{x:.2f}' for x in ratios)})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="gpt,hybrid")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="steps per side per round")
    parser.add_argument("--widths", default="256,512", help="hybrid hidden sizes")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compile", action="store_true", help="ours with train.compile's regional compilation")
    args = parser.parse_args()
    for name in args.only.split(","):
        if name == "gpt":
            compare("GPT vs Llama", *gpt_case(), args.rounds, args.steps, args.profile, args.compile)
        elif name == "hybrid":
            for width in (int(w) for w in args.widths.split(",")):
                compare(f"hybrid (hidden {width}) vs Nemotron-H", *hybrid_case(width), args.rounds, args.steps,
                        args.profile, args.compile)
        else:
            raise SystemExit(f"--only: unknown {name!r}; valid: gpt, hybrid")


if __name__ == "__main__":
    main()
