"""Hardware facts the loop and the benchmarks share: device and precision choice, autocast, peak matmul rate,
peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from minigpt.config import ConfigError
from minigpt.model import GPT, GPTConfig


def cpu_has_fast_bf16() -> bool:
    """True when this CPU runs bf16 matrix products in hardware (AVX-512 BF16 or AMX) through oneDNN.

    Without it, bf16 on a CPU is emulated and far slower than fp32, so ``precision="auto"`` stays fp32.
    """
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def describe_hardware(device: torch.device) -> dict[str, Any]:
    """What a run's figures were made on: the CPU model, the instruction set torch's CPU kernels use (runs
    on AVX2 and AVX-512 machines differ in speed and, slightly, in their fp32 sums) and whether bf16 is
    native; the GPU's name when the run uses one."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_matmul_flops(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    seconds: float = 0.3,
) -> float:
    """FLOP/s of a square matrix product on ``device``: the denominator for model FLOPs utilisation. The
    default size is 1024 on a CPU and 8192 on a GPU, where a 1024 product is too short to keep the device busy
    (an H200 ran it at 63 bf16 TFLOP/s, under a model's own larger products: MFU read 280%)."""
    device = torch.device(device)
    if size is None:
        size = 8192 if device.type == "cuda" else 1024
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


# glibc's mallopt parameters (malloc.h) and the values set: the largest mmap threshold glibc accepts (so
# every block below 32 MiB comes from the heap), and a trim threshold and top pad far above a step's churn.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
_KEEP_FREED = ((_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 2**30), (_M_TOP_PAD, 256 * 2**20))
# No block at all from mmap: blocks above the 32 MiB ceiling come from the heap too, and stay.
_KEEP_LARGE = ((_M_MMAP_MAX, 0),)


def keep_freed_memory(large_blocks: bool = True) -> bool:
    """Make glibc's malloc keep freed memory in the process instead of returning it to the kernel.

    By default glibc serves every block over its (adaptive) mmap threshold with a fresh ``mmap`` and gives
    it back on ``free``, and trims the heap top whenever it exceeds 128 KiB. A training step frees and
    reallocates the same activations and gradients every step, so each step faults in freshly zeroed pages
    again: measured, 18-22% of a CPU run's time spent in the kernel. Raising the thresholds keeps those
    pages mapped for the next step. glibc's mmap threshold stops at 32 MiB, so bigger blocks (the loss's
    64 MB logit chunks, a large model's activations) would still come and go: 12-16% of a study run's
    CPU time (benchmarks/README.md). ``large_blocks`` (the default) keeps those too, by serving every block
    from the heap; ``large_blocks=False`` is the thresholds alone, kept for the allocator benchmark's
    comparison. Returns whether the setting took effect (False off glibc)."""
    libc_name = ctypes.util.find_library("c")
    if sys.platform != "linux" or libc_name is None:
        return False
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = _KEEP_FREED + (_KEEP_LARGE if large_blocks else ())
    return all(mallopt(param, value) == 1 for param, value in settings)


def available_devices() -> list[str]:
    """The device types this torch build can use on this machine, best first."""
    devices = ["cpu"]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.insert(0, "mps")
    if torch.cuda.is_available():
        devices.insert(0, "cuda")
    return devices


def pick_device(name: str, key: str = "train.device") -> torch.device:
    """``auto``: the best available device; else the named one, which must exist here (a ``ConfigError``
    naming the devices that do, rather than torch's assertion deep inside the first allocation); ``key``
    is the option the user set."""
    available = available_devices()
    if name == "auto":
        return torch.device(available[0])
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"{key}: {name!r} is not a device name; this machine has {', '.join(available)}"
        ) from None
    if device.type not in available:
        raise ConfigError(
            f"{key}: {name!r} is not available here (this machine has {', '.join(available)}); "
            "use --device=auto or one of those"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}: {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


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


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can still get: free device memory on CUDA, ``MemAvailable`` on a Linux CPU;
    None where it is not known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return None


def training_memory_bytes(config: GPTConfig, micro_batch_size: int) -> tuple[int, int]:
    """A lower estimate of one process's training memory in fp32: (weights, gradients and AdamW's two
    moments; activations kept for backward).

    Activations follow Korthikanti et al. 2022 (about 34 values per token per width unit per layer, plus
    attention's 5 per head per key position when the T x T scores are materialised), doubled for fp32.
    """
    with torch.device("meta"):
        params = GPT(config).num_params()
    tokens = micro_batch_size * config.block_size
    per_layer = tokens * config.n_embd * 34
    if config.attention == "manual":
        per_layer += tokens * config.n_head * config.block_size * 5
    return 16 * params, 2 * config.n_layer * per_layer


def check_fits_in_memory(config: GPTConfig, micro_batch_size: int, device: torch.device) -> None:
    """Refuse a training batch that cannot fit, before any data loads, rather than fail (or swap) later."""
    available = available_memory_bytes(device)
    if available is None:
        return
    states, activations = training_memory_bytes(config, micro_batch_size)
    if states + activations > available:
        gib = 2**30
        raise ConfigError(
            f"the training batch does not fit in memory: micro_batch_size={micro_batch_size} at context "
            f"{config.block_size} needs about {(states + activations) / gib:.1f} GiB on {device.type} "
            f"(weights, gradients and AdamW state {states / gib:.1f} GiB, activations "
            f"{activations / gib:.1f} GiB), but {available / gib:.1f} GiB is available. Lower "
            "--micro_batch_size (the batch_size stays, through gradient accumulation), --block_size or the "
            "model's size"
        )
