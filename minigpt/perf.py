"""Hardware facts the loop and the benchmarks share: precision support, peak matmul rate, peak memory."""

from __future__ import annotations

import resource
import sys
import time

import torch


def cpu_has_fast_bf16() -> bool:
    """True when this CPU runs bf16 matrix products in hardware (AVX-512 BF16 or AMX) through oneDNN.

    Without it, bf16 on a CPU is emulated and far slower than fp32, so ``precision="auto"`` stays fp32.
    """
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def measure_matmul_flops(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int = 1024,
    seconds: float = 0.3,
) -> float:
    """FLOP/s of a square matrix product on ``device``: the denominator for model FLOPs utilisation."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: library initialisation and kernel selection stay out of the timing
    _sync(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 2:
        a @ b
        runs += 1
        _sync(device)
    return 2 * size**3 * runs / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: device memory on CUDA, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
