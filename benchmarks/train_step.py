"""Training-step speed and memory: MiniGPT against Hugging Face GPT2LMHeadModel, same weights, same batches.

    python -m benchmarks.train_step --config seed --threads 2 --reps 3 --out train_step.json
    python -m benchmarks.train_step --config tiny --precision fp32 bf16

A step is forward + backward + AdamW on one (batch, block_size) batch. MiniGPT computes its loss with the
fused chunked head (``model(x, y)``); HF computes full logits and ``F.cross_entropy`` on them in float32,
which is what its own ``labels=`` path does (ours passes targets already shifted, so both score exactly
batch * block_size tokens). Dropout is 0 on both sides; both use ``torch.optim.AdamW`` (foreach).

Precisions: ``fp32`` (both), ``bf16`` (both under bf16 autocast) and ``defaults`` (each side's default:
``precision="auto"`` of ``minigpt.train`` for us, fp32 for HF). On a CPU without native bf16 the bf16
rows are skipped unless --force-bf16 (a tiny-config bf16 step then takes minutes), and ``defaults``
equals ``fp32``.

Memory: each side runs in a fresh subprocess (its own model and optimizer only), takes one warm-up step
so that AdamW's state exists, then reports how far one more step raises the process's peak resident set
size (VmHWM after a reset, minus the RSS before the step); on CUDA, the allocator's peak.

MFU: model FLOPs per token (``GPT.flops_per_token``: 6N + attention) times tokens/s, over the matrix-product
ceiling measured in the same run at the same thread count and precision.
"""

from __future__ import annotations

import argparse
import multiprocessing
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import (
    CONFIGS,
    build_peers,
    environment,
    peak_memory_increase_mb,
    print_table,
    random_batches,
    range_cell,
    rate,
    ratio_cell,
    skip_reason,
    time_alternating,
    write_json,
)
from minigpt import perf
from minigpt.perf import autocast_for, pick_precision

SIDES = ("minigpt", "hf")


def make_step(
    side: str, model: torch.nn.Module, batches, precision: str, device: torch.device, compile_model: bool
) -> Callable[[], None]:
    """One training step per call, cycling through ``batches``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    autocast = autocast_for(precision, device)
    forward = torch.compile(model) if compile_model else model
    counter = iter(range(10**9))

    def step() -> None:
        x, y = batches[next(counter) % len(batches)]
        with autocast():
            if side == "minigpt":
                _, loss = forward(x, y)
            else:
                logits = forward(input_ids=x).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _memory_probe(side: str, args: dict, precision: str, queue) -> None:
    """Subprocess body: build one side only, warm up one step, measure the next."""
    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    ours, hf = build_peers(args["config"], device)
    model = ours if side == "minigpt" else hf
    del ours, hf  # the other side's weights must not count towards this side's memory
    batches = random_batches(2, args["batch_size"], CONFIGS[args["config"]]["block_size"], device)
    step = make_step(side, model.train(), batches, precision, device, args["compile"])
    step()
    queue.put(peak_memory_increase_mb(step, device))


def measure_memory(side: str, args: argparse.Namespace, precision: str) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_memory_probe, args=(side, vars(args), precision, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=CONFIGS, nargs="+", default=["tiny", "seed", "gpt2"])
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "defaults"), nargs="+", default=["fp32", "bf16", "defaults"]
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, both sides")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides")
    parser.add_argument("--force-bf16", action="store_true", help="run bf16 even where it is emulated")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fast_bf16 = device.type == "cuda" or perf.cpu_has_fast_bf16()
    ceiling = {
        "fp32": perf.measure_matmul_flops(device, torch.float32),
        "bf16": perf.measure_matmul_flops(device, torch.bfloat16, size=None if fast_bf16 else 256),
    }

    rows, notes = (
        [],
        [f"matmul ceiling: fp32 {ceiling['fp32'] / 1e9:.1f}, bf16 {ceiling['bf16'] / 1e9:.1f} GFLOP/s"],
    )
    for config_name in args.config:
        if reason := skip_reason(config_name, device):
            notes.append(f"skipped {reason}")
            continue
        for mode in args.precision:
            if mode == "bf16" and not fast_bf16 and not args.force_bf16:
                notes.append(
                    f"skipped {config_name} bf16: this CPU emulates bf16 matmuls "
                    f"({ceiling['bf16'] / 1e9:.1f} GFLOP/s); --force-bf16 runs it anyway"
                )
                continue
            ours_precision = pick_precision("auto", device) if mode == "defaults" else mode
            hf_precision = "fp32" if mode == "defaults" else mode
            if mode == "defaults" and ours_precision == "fp32" and "fp32" in args.precision:
                notes.append(f"{config_name} defaults: both sides default to fp32 here, the fp32 row applies")
                continue
            ours, hf = build_peers(config_name, device)
            block_size = CONFIGS[config_name]["block_size"]
            batches = random_batches(2, args.batch_size, block_size, device)
            steps = {
                "minigpt": make_step("minigpt", ours.train(), batches, ours_precision, device, args.compile),
                "hf": make_step("hf", hf.train(), batches, hf_precision, device, args.compile),
            }
            stats = time_alternating(steps, args.warmup, args.reps, device)
            flops_per_token = ours.flops_per_token(block_size)
            del ours, hf, steps
            tokens = args.batch_size * block_size
            row = dict(config=config_name, mode=mode, tokens_per_step=tokens)
            for side, precision in (("minigpt", ours_precision), ("hf", hf_precision)):
                tokens_per_s = rate(stats[side], tokens)
                row[side] = dict(
                    precision=precision,
                    seconds_per_step=stats[side],
                    tokens_per_s=tokens_per_s,
                    mfu=tokens_per_s["median"] * flops_per_token / ceiling[precision],
                    peak_mem_increase_mb=None
                    if args.no_memory
                    else measure_memory(side, args_for(args, config_name), precision),
                )
            rows.append(row)

    cells = []
    for r in rows:
        ours, hf = r["minigpt"], r["hf"]
        memory = [
            "-" if ours["peak_mem_increase_mb"] is None else f"{ours['peak_mem_increase_mb']:.0f}",
            "-" if hf["peak_mem_increase_mb"] is None else f"{hf['peak_mem_increase_mb']:.0f}",
            "-"
            if ours["peak_mem_increase_mb"] is None
            else ratio_cell(ours["peak_mem_increase_mb"], hf["peak_mem_increase_mb"]),
        ]
        cells.append(
            [
                r["config"],
                f"{ours['precision']} / {hf['precision']}",
                range_cell(ours["tokens_per_s"]),
                range_cell(hf["tokens_per_s"]),
                ratio_cell(ours["tokens_per_s"]["median"], hf["tokens_per_s"]["median"]),
                f"{100 * ours['mfu']:.0f}% / {100 * hf['mfu']:.0f}%",
                " / ".join(f"{side['seconds_per_step']['sys_per_call']:.2f}" for side in (ours, hf)),
                *memory,
            ]
        )
    print_table(
        f"training step (fwd+bwd+AdamW) on {device}, batch {args.batch_size}, {args.threads} threads, "
        f"median (min-max) of {args.reps} alternating reps after {args.warmup} warm-up"
        + (", torch.compile" if args.compile else ""),
        [
            "config",
            "precision ours / HF",
            "minigpt tok/s",
            "HF tok/s",
            "ratio",
            "MFU ours / HF",
            "sys s/step ours / HF",
            "peak +MB ours",
            "peak +MB HF",
            "mem ratio",
        ],
        cells,
        notes,
    )
    result = dict(
        environment=environment(args.threads, device),
        ceiling_flops=ceiling,
        args=vars(args),
        rows=rows,
        notes=notes,
    )
    write_json(args.out, result)
    return result


def args_for(args: argparse.Namespace, config_name: str) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "config": config_name})


if __name__ == "__main__":
    main()
