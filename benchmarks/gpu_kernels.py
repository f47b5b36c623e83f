"""GPU kernel checks for the one-GPU smoke: the ceilings, then each CUDA path gigatron dispatches to.

Run on a CUDA machine (benchmarks/gpu_smoke.sh calls it). For each path it prints a correctness
figure against an independent computation and a time with CUDA events (median of repeats after a
warm-up); everything is also written as JSON to ``--out``:

- ceilings: a bf16 8192^3 matmul (TFLOP/s) and a device-to-device copy (TB/s, read + write);
- Mamba-2's SSD: ``gigatron.models.layers.ssd.ssd`` (mamba_ssm's Triton kernel where it imports)
  against ``ssd_chunked`` (our PyTorch path) in fp32 on the same inputs: output, final state and
  every input gradient as ||a - b|| / ||b||, and the forward+backward time of both;
- attention: ``F.scaled_dot_product_attention`` with ``is_causal`` and GQA as the trainer calls it,
  in bf16: which backends accept it (flash, memory-efficient, cuDNN, math), the time of each, and the
  error of the default against an fp32 math computation;
- ring/blockwise attention (context parallelism's per-rank kernel) on CUDA tensors: error against
  SDPA and time, since its fused path is CPU-only today;
- Mamba-1's selective scan: which implementation runs on CUDA and its time.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable

import torch
import torch.nn.functional as F

DEVICE = "cuda"
SCALE = 1  # --small divides the problem sizes, for a dry run of this script on the CPU


def cuda_time_ms(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of `fn` (CUDA events on the GPU), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if DEVICE == "cpu":
            start_s = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - start_s))
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def ceilings() -> dict:
    n = 8192 // SCALE
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    ms = cuda_time_ms(lambda: a @ b)
    src = torch.randn(2**28 // SCALE**3, device=DEVICE)  # 1 GiB, far above the 60 MB L2
    dst = torch.empty_like(src)
    copy_ms = cuda_time_ms(lambda: dst.copy_(src))
    return {"bf16_matmul_tflops": 2 * n**3 / ms / 1e9, "copy_tb_per_s": 2 * src.numel() * 4 / copy_ms / 1e9}


def ssd_inputs(b: int, length: int, h: int, p: int, g: int, n: int, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=DEVICE, generator=gen) * scale).to(dtype)

    x = randn(b, length, h, p)
    dt = F.softplus(torch.randn(b, length, h, device=DEVICE, generator=gen) - 3.0).to(dtype)
    A = -torch.rand(h, device=DEVICE, generator=gen) * 4 - 0.5
    B, C = randn(b, length, g, n, scale=0.5), randn(b, length, g, n, scale=0.5)
    D = torch.randn(h, device=DEVICE, generator=gen)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D)]


def ssd_check(length: int) -> dict:
    from gigatron.models.layers import ssd as ssd_module

    kernel = ssd_module._cuda_kernel()
    result: dict = {"triton_kernel": kernel is not None, "length": length}
    shape = dict(b=2, length=length // SCALE, h=32 // SCALE, p=64, g=max(1, 4 // SCALE), n=128)  # the 1.3B hybrid's mixer at TP=2
    result["shape"] = shape
    chunk = 256
    ins = ssd_inputs(**shape, dtype=torch.float32)

    def run(fn):
        for t in ins:
            t.grad = None
        y, state = fn(*ins[:5], chunk, D=ins[5])
        (y.square().mean() + state.square().mean()).backward()
        return [y.detach(), state.detach()] + [t.grad.detach().clone() for t in ins]

    ours = run(ssd_module.ssd_chunked)
    if kernel is not None:
        fused = run(ssd_module.ssd)
        names = ["y", "final_state", "dx", "ddt", "dA", "dB", "dC", "dD"]
        result["rel_error_vs_chunked"] = {k: rel(a, b) for k, a, b in zip(names, fused, ours, strict=True)}
        result["fused_fwd_bwd_ms"] = cuda_time_ms(lambda: run(ssd_module.ssd))
    result["chunked_fwd_bwd_ms"] = cuda_time_ms(lambda: run(ssd_module.ssd_chunked))
    return result


def attention_check() -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, kv, length, d = 2, 16 // SCALE, 8 // SCALE, 4096 // SCALE, 128
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    q = torch.randn(b, h, length, d, device=DEVICE, generator=gen, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(b, kv, length, d, device=DEVICE, generator=gen, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(b, kv, length, d, device=DEVICE, generator=gen, dtype=torch.bfloat16, requires_grad=True)
    result: dict = {"shape": dict(b=b, heads=h, kv_heads=kv, length=length, head_dim=d)}
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True, enable_gqa=True)
    flops = 4 * b * h * length * length * d / 2 * 3.5  # causal half; backward ~2.5x forward

    def fwd_bwd():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out.sum().backward()
        return out

    result["default_rel_error"] = rel(F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), ref)
    ms = cuda_time_ms(fwd_bwd)
    result["default_fwd_bwd_ms"] = ms
    result["default_tflops"] = flops / ms / 1e9
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        try:
            with sdpa_kernel(backend):
                result[f"{backend.name}_fwd_bwd_ms"] = cuda_time_ms(fwd_bwd)
        except Exception as exc:  # a backend that rejects these inputs is a finding, not a failure
            result[f"{backend.name}"] = f"rejected: {str(exc).splitlines()[0][:160]}"
    return result


def blockwise_check() -> dict:
    from gigatron.models.layers.blockwise_attention import memory_efficient_attention

    b, h, kv, length, d = 1, 16 // SCALE, 8 // SCALE, 4096 // SCALE, 128
    gen = torch.Generator(device=DEVICE).manual_seed(2)
    q, k, v = (torch.randn(b, n, length, d, device=DEVICE, generator=gen, dtype=torch.bfloat16)
               for n in (h, kv, kv))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    out = memory_efficient_attention(q, k, v, causal=True)
    return {"rel_error_vs_sdpa": rel(out, ref),
            "fwd_ms": cuda_time_ms(lambda: memory_efficient_attention(q, k, v, causal=True)),
            "sdpa_fwd_ms": cuda_time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                               enable_gqa=True))}


def selective_scan_check() -> dict:
    from gigatron.models.layers import selective_scan as scan

    b, d, n, length = 2, 2048 // SCALE, 16, 2048 // SCALE
    gen = torch.Generator(device=DEVICE).manual_seed(3)
    u = torch.randn(b, d, length, device=DEVICE, generator=gen)
    delta = F.softplus(torch.randn(b, d, length, device=DEVICE, generator=gen) - 2)
    A = -torch.rand(d, n, device=DEVICE, generator=gen) - 0.5
    B, C = (torch.randn(b, n, length, device=DEVICE, generator=gen) for _ in range(2))
    kernel = scan._mamba_ssm_kernel()
    return {"cuda_kernel": kernel is not None, "shape": dict(b=b, d=d, n=n, length=length),
            "fwd_ms": cuda_time_ms(lambda: scan.selective_scan(u, delta, A, B, C))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_kernels.json")
    parser.add_argument("--device", default="cuda", help="cpu runs a dry run of the script itself")
    parser.add_argument("--small", type=int, default=1, help="divide problem sizes by this (dry runs)")
    args = parser.parse_args()
    global DEVICE, SCALE
    DEVICE, SCALE = args.device, args.small
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    results: dict = {"device": name, "torch": torch.__version__}
    checks = {"ceilings": ceilings, "ssd_4096": lambda: ssd_check(4096), "attention": attention_check,
              "blockwise_attention": blockwise_check, "selective_scan": selective_scan_check}
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            results[name] = check()
        except Exception:
            results[name] = {"error": traceback.format_exc(limit=4)}
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        print(f"{name} ({time.perf_counter() - start:.1f} s): {json.dumps(results[name], default=str)}", flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
