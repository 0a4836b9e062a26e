"""What keeping freed memory (``train.keep_freed_memory``, ``minigpt.perf.keep_freed_memory``) buys a CPU
training step: kernel time, page faults and tokens/s, for MiniGPT and for Hugging Face GPT-2 alike.

    python -m benchmarks.allocator --config tiny --threads 2 --steps 20 --reps 2 --out allocator.json

glibc's malloc setting is per process and cannot be undone, and one peer's allocations change what the other
finds in the heap, so each (config, setting, side) runs in a fresh ``spawn`` subprocess of its own: it applies
the setting (or not) before building anything, builds both peers from the same weights (so that both start
from the same state), keeps one, and times its training steps (same batches, same precision) after
``--warmup`` untimed ones. Kernel time is the process's system CPU time (``getrusage``) over the timed steps,
as a share of its user + system time; page faults are its minor faults over the same steps. ``--reps``
repeats every process, the sides' order swapped each time, and reports the median tokens/s and the kernel
share and faults over all reps. Ratios: each side with the setting over without it, and MiniGPT over HF with
the same setting on both sides (with and without).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import CONFIGS, build_peers, environment, print_table, random_batches, write_json
from minigpt import perf

# "keep": glibc's thresholds raised (the blocks above its 32 MiB mmap ceiling still come and go); "keep-all":
# those blocks kept too, the default of train.keep_freed_memory.
SETTINGS = ("default", "keep", "keep-all")
SIDES = ("minigpt", "hf")


def _usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def measure(
    config_name: str,
    setting: str,
    side: str,
    threads: int,
    warmup: int,
    steps: int,
    batch_size: int,
    precision: str,
) -> dict[str, float]:
    """In this (fresh) process: apply ``setting``, then time ``steps`` training steps of one peer."""
    if setting != "default" and not perf.keep_freed_memory(large_blocks=setting == "keep-all"):
        raise RuntimeError("keep_freed_memory had no effect here (not glibc?)")
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    ours, hf = build_peers(config_name, device)
    model = ours if side == "minigpt" else hf
    del ours, hf
    block = CONFIGS[config_name]["block_size"]
    x, y = random_batches(1, batch_size, block, device)[0]
    autocast = perf.autocast_for(precision, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with autocast():
            if side == "minigpt":
                loss = model(x, y)[1]
            else:
                loss = F.cross_entropy(model(x).logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):  # optimizer state and the allocator's first pages
        step()
    user0, sys0, faults0 = _usage()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    wall = time.perf_counter() - start
    user1, sys1, faults1 = _usage()
    return {
        "tokens_per_sec": steps * x.numel() / wall,
        "user_s": user1 - user0,
        "sys_s": sys1 - sys0,
        "faults": faults1 - faults0,
        "steps": steps,
    }


def _child(queue: multiprocessing.Queue, *args: Any) -> None:
    queue.put(measure(*args))


def run_isolated(*args: Any) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, *args))
    process.start()
    result = queue.get()
    process.join()
    return result


def summarise(reps: list[dict[str, float]]) -> dict[str, Any]:
    """One (config, setting, side) over its processes: median speed, kernel share and faults over all."""
    user = sum(r["user_s"] for r in reps)
    sys_s = sum(r["sys_s"] for r in reps)
    steps = sum(r["steps"] for r in reps)
    return {
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in reps),
        "kernel_share": sys_s / max(user + sys_s, 1e-9),
        "faults_per_step": sum(r["faults"] for r in reps) / steps,
        "sys_s_per_step": sys_s / steps,
        "reps": reps,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", nargs="+", default=["tiny", "cpu_hour", "seed"], choices=CONFIGS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    parser.add_argument("--steps", type=int, default=20, help="timed steps in each process")
    parser.add_argument("--reps", type=int, default=1, help="processes per (setting, side), order swapped")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="auto", help="fp32, bf16, or auto (this CPU's fast one)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    precision = perf.pick_precision(args.precision, torch.device("cpu"))
    fixed = (args.threads, args.warmup, args.steps, args.batch_size, precision)
    results: dict[str, dict[str, Any]] = {}
    rows = []
    for name in args.config:
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for rep in range(args.reps):
            for setting in SETTINGS:
                for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
                    runs.setdefault((setting, side), []).append(run_isolated(name, setting, side, *fixed))
        results[name] = {s: {side: summarise(runs[s, side]) for side in SIDES} for s in SETTINGS}
        for side in SIDES:
            for setting in SETTINGS:
                r = results[name][setting][side]
                rows.append(
                    [
                        name,
                        side,
                        setting,
                        f"{r['tokens_per_sec']:,.0f}",
                        f"{100 * r['kernel_share']:.1f}%",
                        f"{r['faults_per_step']:,.0f}",
                    ]
                )
            for setting in SETTINGS[1:]:
                gain = (
                    results[name][setting][side]["tokens_per_sec"]
                    / results[name]["default"][side]["tokens_per_sec"]
                )
                rows.append([name, side, f"{setting} / default", f"{gain:.2f}x", "", ""])
        for setting in SETTINGS:
            ours, hf = (results[name][setting][side]["tokens_per_sec"] for side in SIDES)
            rows.append([name, "minigpt / hf", setting, f"{ours / hf:.2f}x", "", ""])
    print_table(
        f"Keeping freed memory: training steps, {precision}, {args.threads} thread(s), "
        f"batch {args.batch_size}",
        ["config", "side", "allocator", "tokens/s", "kernel time", "page faults / step"],
        rows,
        [
            f"each setting and side in a fresh process of its own: {args.warmup} untimed and "
            f"{args.steps} timed steps, {args.reps} process(es) each, the sides' order swapped each rep; "
            "tokens/s the median"
        ],
    )
    result = {"environment": environment(args.threads, torch.device("cpu")), "precision": precision}
    result["results"] = results
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
