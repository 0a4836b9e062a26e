"""What keeping freed memory (``train.keep_freed_memory``, ``minigpt.perf.keep_freed_memory``) buys a CPU
training step: kernel time, page faults and tokens/s, for MiniGPT and for Hugging Face GPT-2 alike.

    python -m benchmarks.allocator --config tiny cpu_hour seed --threads 2 --steps 6 --out allocator.json

glibc's malloc setting is per process and cannot be undone, so each (config, setting) pair runs in a fresh
``spawn`` subprocess, which applies the setting (or not) before building anything, then times training
steps of both peers (same weights, same batches, same precision), alternating them. Kernel time is the
process's system CPU time (``getrusage``) over the timed steps, as a share of its user + system time;
page faults are its minor faults over the same steps. Ratios: each side with the setting over without it,
and MiniGPT over HF with the same setting on both sides (with and without).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import CONFIGS, build_peers, environment, print_table, random_batches, write_json
from minigpt import perf

# "keep": the default of train.keep_freed_memory; "keep-all": also the blocks above glibc's 32 MiB ceiling.
SETTINGS = ("default", "keep", "keep-all")


def _usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def measure(
    config_name: str, setting: str, threads: int, steps: int, batch_size: int, precision: str
) -> dict:
    """In this (fresh) process: apply ``setting``, then time ``steps`` training steps of each peer."""
    if setting != "default" and not perf.keep_freed_memory(large_blocks=setting == "keep-all"):
        raise RuntimeError("keep_freed_memory had no effect here (not glibc?)")
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    ours, hf = build_peers(config_name, device)
    block = CONFIGS[config_name]["block_size"]
    x, y = random_batches(1, batch_size, block, device)[0]
    autocast = perf.autocast_for(precision, device)
    optimizers = {
        "minigpt": torch.optim.AdamW(ours.parameters(), lr=1e-4),
        "hf": torch.optim.AdamW(hf.parameters(), lr=1e-4),
    }

    def loss_of(side: str) -> torch.Tensor:
        if side == "minigpt":
            return ours(x, y)[1]
        return F.cross_entropy(hf(x).logits.float().flatten(0, 1), y.flatten())

    def step(side: str) -> None:
        with autocast():
            loss = loss_of(side)
        loss.backward()
        optimizers[side].step()
        optimizers[side].zero_grad(set_to_none=True)

    totals = {side: [0.0, 0.0, 0.0, 0] for side in optimizers}  # wall, user, sys, faults
    for side in optimizers:
        step(side)  # warm-up: optimizer state and the allocator's first pages
    for _ in range(steps):
        for side in optimizers:
            user0, sys0, faults0 = _usage()
            start = time.perf_counter()
            step(side)
            wall = time.perf_counter() - start
            user1, sys1, faults1 = _usage()
            for i, value in enumerate((wall, user1 - user0, sys1 - sys0, faults1 - faults0)):
                totals[side][i] += value
    tokens = steps * x.numel()
    return {
        side: {
            "tokens_per_sec": tokens / wall,
            "kernel_share": sys_s / max(user_s + sys_s, 1e-9),
            "faults_per_step": faults / steps,
            "sys_s_per_step": sys_s / steps,
        }
        for side, (wall, user_s, sys_s, faults) in totals.items()
    }


def _child(queue: multiprocessing.Queue, *args: Any) -> None:
    queue.put(measure(*args))


def run_isolated(*args: Any) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, *args))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", nargs="+", default=["tiny", "cpu_hour", "seed"], choices=CONFIGS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each side")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="auto", help="fp32, bf16, or auto (this CPU's fast one)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    precision = perf.pick_precision(args.precision, torch.device("cpu"))
    results: dict[str, dict[str, Any]] = {}
    rows = []
    for name in args.config:
        results[name] = {
            s: run_isolated(name, s, args.threads, args.steps, args.batch_size, precision) for s in SETTINGS
        }
        for side in ("minigpt", "hf"):
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
            ours, hf = (results[name][setting][side]["tokens_per_sec"] for side in ("minigpt", "hf"))
            rows.append([name, "minigpt / hf", setting, f"{ours / hf:.2f}x", "", ""])
    print_table(
        f"Keeping freed memory: training steps, {precision}, {args.threads} thread(s), "
        f"batch {args.batch_size}",
        ["config", "side", "allocator", "tokens/s", "kernel time", "page faults / step"],
        rows,
        [f"{args.steps} timed steps per side, alternating; each setting in a fresh process"],
    )
    result = {"environment": environment(args.threads, torch.device("cpu")), "precision": precision}
    result["results"] = results
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
