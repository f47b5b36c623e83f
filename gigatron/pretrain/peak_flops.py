"""Peak FLOP/s for MFU: a table for known GPUs, a measured matmul peak on the CPU."""

from __future__ import annotations

import functools
import time

import torch

# Dense (no sparsity) peak per device, by precision, from the vendors' datasheets.
_GPU_PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100 SXM": {"bf16": 989e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp32": 51e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp32": 91.6e12},
    "A10": {"bf16": 125e12, "fp32": 31.2e12},
}


def gpu_peak_flops(device_name: str, precision: str) -> float | None:
    """Datasheet peak of a GPU whose name contains a table key (longest key wins), else None."""
    for key in sorted(_GPU_PEAKS, key=len, reverse=True):
        if key in device_name:
            return _GPU_PEAKS[key][precision]
    return None


@functools.cache
def measured_matmul_flops(dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 0.3) -> float:
    """Best observed FLOP/s of a square matmul on this process's CPU threads.

    Measured rather than tabulated because CPUs, thread counts and neighbours vary; the best of
    several repetitions approximates what a well-fed GEMM reaches here, the ceiling MFU compares to.
    """
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        torch.mm(a, b)
        elapsed = time.perf_counter() - start
        best = max(best, 2.0 * size**3 / elapsed)
        if time.perf_counter() > deadline:
            return best


def peak_flops(device: str, precision: str) -> float | None:
    """Peak FLOP/s of one rank's device, or None when unknown (MFU is then not reported)."""
    if device.startswith("cuda"):
        return gpu_peak_flops(torch.cuda.get_device_name(torch.device(device)), precision)
    return measured_matmul_flops(torch.bfloat16 if precision == "bf16" else torch.float32)


def mfu_against(achieved: float, peak: float) -> tuple[float, float]:
    """(MFU, the peak to use from now on) for a step that reached `achieved` FLOP/s. A step faster
    than `peak` proves the hardware can do more than the peak measured (on a machine busy at the
    time): it becomes the peak, so MFU never passes 1."""
    peak = max(peak, achieved)
    return achieved / peak, peak
