"""The hardware figures the loop logs: peak memory in megabytes of this process, and the matmul rate that
MFU divides by, computed from the products it timed."""

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minigpt import perf

CPU = torch.device("cpu")


def status_megabytes(field: str) -> float:
    """A ``/proc/self/status`` figure (given there in kB) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_cpu_peak_memory_is_the_process_high_water_mark_in_megabytes():
    torch.ones(16 * 2**20)  # 64 MB touched, so that the peak is well above an empty interpreter
    peak = perf.peak_memory_mb(CPU)
    assert status_megabytes("VmHWM") == pytest.approx(peak, abs=4)
    assert peak >= status_megabytes("VmRSS") - 4


def test_cuda_peak_memory_is_the_allocators_peak_in_megabytes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**20)
    assert perf.peak_memory_mb(torch.device("cuda")) == 3.0


class CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.mm.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_matmul_rate_is_the_flops_of_the_timed_products_over_their_time(monkeypatch):
    """With a clock that advances 0.125 s at each reading, the rate is 2 * size^3 per product timed (the
    warm-up product excluded) over the time between the first and last readings."""
    readings: list[float] = []

    def clock() -> float:
        readings.append(0.125 * len(readings))
        return readings[-1]

    monkeypatch.setattr(perf.time, "perf_counter", clock)
    with CountMatmuls() as products:
        rate = perf.measure_matmul_flops(CPU, size=32, seconds=0.5)
    timed = products.count - 1
    assert timed >= 2  # at least two products are timed, however fast the first ones seem
    assert rate == pytest.approx(2 * 32**3 * timed / (readings[-1] - readings[0]))


def test_matmul_rate_on_this_cpu_is_plausible():
    rate = perf.measure_matmul_flops(CPU, size=64, seconds=0.02)
    assert 1e6 < rate < 1e14  # between a calculator and a large GPU
