"""The machine's matrix-product ceiling, fp32 and bf16: the denominator of model FLOPs utilisation.

    python benchmarks/matmul.py --threads 2 [--out matmul.json]

The other benchmarks measure the same ceiling in their own run (``minigpt.perf.measure_matmul_flops``),
so MFU is always against what the machine delivered under the same load.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import environment, print_table, write_json
from minigpt import perf


def ceilings(device: torch.device, sizes: list[int]) -> list[dict]:
    """GFLOP/s of square products per dtype and size. On a CPU without native bf16, bf16 is emulated and
    slow, so it is measured at the smallest size only."""
    rows = []
    fast_bf16 = device.type == "cuda" or perf.cpu_has_fast_bf16()
    for dtype in (torch.float32, torch.bfloat16):
        for size in sizes if dtype == torch.float32 or fast_bf16 else sizes[:1]:
            flops = perf.measure_matmul_flops(device, dtype, size=size)
            rows.append(dict(dtype=str(dtype).removeprefix("torch."), size=size, gflops=flops / 1e9))
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = ceilings(device, args.sizes)
    notes = []
    if device.type == "cpu":
        notes.append(f"native bf16 matmul (AVX-512 BF16 / AMX): {perf.cpu_has_fast_bf16()}")
    print_table(
        f"matmul ceiling on {device}, {args.threads} threads",
        ["dtype", "size", "GFLOP/s"],
        [[r["dtype"], str(r["size"]), f"{r['gflops']:.1f}"] for r in rows],
        notes,
    )
    result = dict(environment=environment(args.threads, device), rows=rows)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
