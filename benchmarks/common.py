"""What the benchmarks share: model configurations, the two peers built on the same weights, timing that
alternates the peers, peak-memory probes, and the rich table + JSON output.

Every benchmark times MiniGPT and Hugging Face ``GPT2LMHeadModel`` in the same process, one repetition of
each in turn after a warm-up, so that both see the same load on a shared machine; it reports medians with
min-max and the ratio ours / HF.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from minigpt.hf import to_hf
from minigpt.model import GPT, GPTConfig
from minigpt.perf import cpu_has_fast_bf16, sync
from minigpt.storage import atomic_write_json

CONFIGS = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=128, block_size=256),
    "cpu_hour": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),  # experiments/cpu_hour.py
    "cpu_study": dict(n_layer=4, n_head=4, n_embd=64, block_size=128),  # experiments/ablations/cpu_study.py
    "seed": dict(n_layer=6, n_head=8, n_embd=512, block_size=512),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # GPT-2 small, 124M
    # A minuscule size that runs each benchmark in seconds: the smoke tests use it; its figures mean nothing.
    "smoke": dict(n_layer=1, n_head=2, n_embd=16, block_size=16),
}
GPU_ONLY = {"gpt2"}


def skip_reason(config_name: str, device: torch.device) -> str | None:
    """Why a configuration is not run on this device, or None."""
    if config_name in GPU_ONLY and device.type != "cuda":
        return f"{config_name}: GPU only (a training step at 124M x 1024 context takes minutes on this CPU)"
    return None


def build_peers(config_name: str, device: torch.device, **overrides: Any) -> tuple[GPT, torch.nn.Module]:
    """MiniGPT and a Hugging Face GPT-2 computing the same function with the same weights."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50257, dropout=0.0, **{**CONFIGS[config_name], **overrides})
    ours = GPT(config).to(device)
    hf = to_hf(ours, attn_implementation="sdpa").to(device)
    return ours, hf


def random_batches(
    count: int, batch_size: int, block_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` fixed (inputs, targets) pairs of shape (batch_size, block_size), targets shifted by one."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        block = torch.randint(0, 50257, (batch_size, block_size + 1), generator=generator)
        batches.append((block[:, :-1].to(device), block[:, 1:].to(device)))
    return batches


def time_alternating(
    fns: dict[str, Callable[[], None]], warmup: int, reps: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Seconds per call of each function: ``warmup`` untimed calls each, then ``reps`` rounds in which every
    function runs once, in turn. Returns median, min, max of wall time and the mean system (kernel) CPU
    seconds per call, which on CPU is mostly the allocator mapping and unmapping large blocks."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    system: dict[str, float] = dict.fromkeys(fns, 0.0)
    for _ in range(reps):
        for name, fn in fns.items():
            sys_start, start = os.times().system, time.perf_counter()
            fn()
            sync(device)
            wall[name].append(time.perf_counter() - start)
            system[name] += os.times().system - sys_start
    return {
        name: dict(
            median=statistics.median(times),
            min=min(times),
            max=max(times),
            sys_per_call=system[name] / reps,
        )
        for name, times in wall.items()
    }


def rate(stats: dict[str, float], work: float) -> dict[str, float]:
    """Work per second from seconds per call: median, and min-max (from the slowest and fastest call)."""
    return dict(median=work / stats["median"], min=work / stats["max"], max=work / stats["min"])


# ----------------------------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def reset_peak_rss() -> None:
    """Make the kernel's peak-RSS counter (VmHWM) restart from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_memory_increase_mb(fn: Callable[[], None], device: torch.device) -> float:
    """How far ``fn`` raises this process's memory above where it started: CUDA allocator peak on a GPU,
    resident set size (VmHWM after a reset, minus VmRSS before) on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    reset_peak_rss()
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 2**10


# ----------------------------------------------------------------------------------------------- output


def ratio_cell(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x"


def range_cell(r: dict[str, float], digits: int = 0) -> str:
    return f"{r['median']:.{digits}f} ({r['min']:.{digits}f}-{r['max']:.{digits}f})"


# The CPU features that decide a CPU figure: vector width, and whether bf16 runs in hardware.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
CPUINFO = Path("/proc/cpuinfo")


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and its speed-relevant flags, from ``/proc/cpuinfo`` (what ``lscpu`` shows);
    empty where there is no such file."""
    try:
        lines = CPUINFO.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", "unknown"), "flags": [f for f in SPEED_FLAGS if f in flags]}


def machine_line() -> str:
    """One line naming the machine a table was measured on."""
    cpu = cpu_description()
    flags = ", ".join(cpu.get("flags", [])) or "none of " + ", ".join(SPEED_FLAGS)
    return (
        f"CPU: {cpu.get('model', 'unknown')} ({os.cpu_count()} logical cores; flags: {flags}); "
        f"bf16 in hardware: {'yes' if cpu_has_fast_bf16() else 'no'}; torch {torch.__version__}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def print_table(title: str, columns: list[str], rows: list[list[str]], notes: list[str] = ()) -> None:
    """The table, its notes, and the machine it was measured on."""
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=200)
    console.print(table)
    for note in [*notes, machine_line()]:
        console.print(note)


def environment(threads: int, device: torch.device) -> dict[str, Any]:
    """What a reader needs to compare numbers across runs."""
    return dict(
        torch=torch.__version__,
        device=str(device),
        threads=threads,
        cuda=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        malloc_env={k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        cpu_count=os.cpu_count(),
        cpu=cpu_description(),
        load_average=os.getloadavg(),
    )


def write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        atomic_write_json(path, result)
