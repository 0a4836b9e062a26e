"""Hardware facts the loop and the benchmarks share: device and precision choice, autocast, peak matmul rate,
peak memory."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable

import torch

from minigpt.config import ConfigError


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
    sync(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 2:
        a @ b
        runs += 1
        sync(device)
    return 2 * size**3 * runs / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: device memory on CUDA, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_precision(name: str, device: torch.device) -> str:
    """Resolve ``auto``: bf16 where the hardware runs it natively (measured faster), else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs CUDA (device is {device.type}); use bf16 or fp32")
    return name


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)
