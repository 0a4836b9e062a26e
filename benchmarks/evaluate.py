"""Evaluation speed: the loss of a batch without gradients, MiniGPT against Hugging Face GPT2LMHeadModel.

    python -m benchmarks.evaluate --config seed --threads 2 --reps 3 --out evaluate.json

MiniGPT scores with ``model(x, y)`` (the chunked head: full logits never exist); HF computes full logits and
``F.cross_entropy`` on them in float32, as its ``labels=`` path does. Same weights, same batches, both under
``torch.inference_mode``, alternating, medians with min-max.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import (
    CONFIGS,
    build_peers,
    environment,
    print_table,
    random_batches,
    range_cell,
    rate,
    ratio_cell,
    skip_reason,
    time_alternating,
    write_json,
)
from minigpt.perf import autocast_for


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=CONFIGS, nargs="+", default=["tiny", "seed", "gpt2"])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, both sides")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast = autocast_for(args.precision, device)

    rows, notes = [], []
    for config_name in args.config:
        if reason := skip_reason(config_name, device):
            notes.append(f"skipped {reason}")
            continue
        ours, hf = build_peers(config_name, device)
        ours.eval(), hf.eval()
        block_size = CONFIGS[config_name]["block_size"]
        batches = random_batches(1, args.batch_size, block_size, device)
        x, y = batches[0]

        @torch.inference_mode()
        def score_ours(ours=ours, x=x, y=y) -> None:
            with autocast():
                ours(x, y)

        @torch.inference_mode()
        def score_hf(hf=hf, x=x, y=y) -> None:
            with autocast():
                F.cross_entropy(hf(input_ids=x).logits.float().flatten(0, 1), y.flatten())

        stats = time_alternating({"minigpt": score_ours, "hf": score_hf}, args.warmup, args.reps, device)
        tokens = args.batch_size * block_size
        rows.append(
            dict(config=config_name, **{side: rate(stats[side], tokens) for side in stats}, seconds=stats)
        )

    print_table(
        f"evaluation (no grad, loss of a batch) on {device}, {args.precision}, batch {args.batch_size}, "
        f"{args.threads} threads, median (min-max) of {args.reps} alternating reps, {args.warmup} warm-up",
        ["config", "minigpt tok/s", "HF tok/s", "ratio"],
        [
            [
                r["config"],
                range_cell(r["minigpt"]),
                range_cell(r["hf"]),
                ratio_cell(r["minigpt"]["median"], r["hf"]["median"]),
            ]
            for r in rows
        ],
        notes,
    )
    result = dict(environment=environment(args.threads, device), args=vars(args), rows=rows, notes=notes)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
