"""Generation speed: our KV-cached ``GPT.generate`` against Hugging Face ``generate`` on the same weights.

    python benchmarks/generate.py                      # seed config: 6 layers, 512 wide, 8 heads
    python benchmarks/generate.py --config small --out gen.json

Both sides run in float32 with the same torch thread count, decode greedily (or with the same fixed
seed when --sample) for exactly --new-tokens tokens (HF's early stop is disabled), after a warm-up.
Reported: median tokens/s over --reps runs, per batch size, and our speed-up over HF.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from minigpt.hf import to_hf
from minigpt.model import GPT, GPTConfig

CONFIGS = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=128, block_size=256),
    "seed": dict(n_layer=6, n_head=8, n_embd=512, block_size=512),
    "small": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}


def timed(fn, reps: int) -> tuple[float, torch.Tensor]:
    """Median seconds of fn over reps runs after a warm-up run, and the warm-up's output."""
    output = fn()  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), output


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=CONFIGS, default="seed")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--sample", action="store_true", help="sample (top-k 50, fixed seed) instead of greedy"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for both sides; batch-1 decoding is memory-bound, and on a shared CPU "
        "surplus threads spin-wait",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50257, **CONFIGS[args.config])
    ours = GPT(config).eval()
    hf = to_hf(ours, attn_implementation="sdpa").eval()
    top_k = 50 if args.sample else None

    rows = []
    for batch_size in args.batch_sizes:
        prompt = torch.randint(0, config.vocab_size, (batch_size, args.prompt_len))

        def run_ours(prompt=prompt):
            generator = torch.Generator().manual_seed(0)
            return ours.generate(
                prompt, args.new_tokens, do_sample=args.sample, top_k=top_k, generator=generator
            )

        def run_hf(prompt=prompt):
            torch.manual_seed(0)
            with torch.inference_mode():
                return hf.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=args.sample,
                    top_k=top_k,
                    eos_token_id=None,
                    pad_token_id=0,
                )

        tokens = batch_size * args.new_tokens
        ours_s, ours_out = timed(run_ours, args.reps)
        hf_s, hf_out = timed(run_hf, args.reps)
        ours_tps, hf_tps = tokens / ours_s, tokens / hf_s
        # Sampling draws from the same distributions but not the same random stream, so only greedy compares.
        same = None if args.sample else torch.equal(ours_out, hf_out)
        rows.append(
            dict(
                batch_size=batch_size,
                ours_tokens_per_s=ours_tps,
                hf_tokens_per_s=hf_tps,
                speedup=ours_tps / hf_tps,
                same_tokens=same,
            )
        )

    table = Table(
        title=f"generate: {args.config} config ({ours.num_params() / 1e6:.1f}M params), "
        f"{'sampling' if args.sample else 'greedy'}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
        f"{args.threads} threads, median of {args.reps}"
    )
    for column in ("batch", "minigpt tok/s", "HF tok/s", "speed-up", "same tokens"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["batch_size"]),
            f"{row['ours_tokens_per_s']:.1f}",
            f"{row['hf_tokens_per_s']:.1f}",
            f"{row['speedup']:.2f}x",
            "-" if row["same_tokens"] is None else str(row["same_tokens"]),
        )
    Console().print(table)

    result = dict(
        config=args.config,
        model_config=CONFIGS[args.config],
        sample=args.sample,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        reps=args.reps,
        threads=args.threads,
        torch=torch.__version__,
        rows=rows,
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
