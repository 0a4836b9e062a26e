"""Generation speed: our KV-cached ``GPT.generate`` against Hugging Face ``generate`` on the same weights.

    python -m benchmarks.generate                      # seed config: 6 layers, 512 wide, 8 heads
    python -m benchmarks.generate --config gpt2 --out gen.json

Both sides run in float32 with the same torch thread count, decode greedily (or with the same fixed
seed when --sample) for exactly --new-tokens tokens (HF's early stop is disabled). After one untimed run
each (whose greedy outputs are compared), the two sides alternate for --reps runs. Reported: median
tokens/s (min-max), per batch size, and our speed-up over HF.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import (
    CONFIGS,
    build_peers,
    environment,
    print_table,
    range_cell,
    rate,
    ratio_cell,
    time_alternating,
    write_json,
)


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
    device = torch.device("cpu")
    ours, hf = build_peers(args.config, device)
    ours.eval(), hf.eval()
    config = ours.config
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
        ours_out, hf_out = run_ours(), run_hf()  # also the warm-up
        stats = time_alternating({"minigpt": run_ours, "hf": run_hf}, 0, args.reps, device)
        ours_tps, hf_tps = rate(stats["minigpt"], tokens), rate(stats["hf"], tokens)
        # Sampling draws from the same distributions but not the same random stream, so only greedy compares.
        same = None if args.sample else torch.equal(ours_out, hf_out)
        rows.append(
            dict(
                batch_size=batch_size,
                ours_tokens_per_s=ours_tps,
                hf_tokens_per_s=hf_tps,
                speedup=ours_tps["median"] / hf_tps["median"],
                same_tokens=same,
            )
        )

    print_table(
        f"generate: {args.config} config ({ours.num_params() / 1e6:.1f}M params), "
        f"{'sampling' if args.sample else 'greedy'}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
        f"{args.threads} threads, median (min-max) of {args.reps} alternating runs",
        ["batch", "minigpt tok/s", "HF tok/s", "speed-up", "same tokens"],
        [
            [
                str(row["batch_size"]),
                range_cell(row["ours_tokens_per_s"], 1),
                range_cell(row["hf_tokens_per_s"], 1),
                ratio_cell(row["ours_tokens_per_s"]["median"], row["hf_tokens_per_s"]["median"]),
                "-" if row["same_tokens"] is None else str(row["same_tokens"]),
            ]
            for row in rows
        ],
    )
    result = dict(
        environment=environment(args.threads, device),
        config=args.config,
        model_config=CONFIGS[args.config],
        sample=args.sample,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        reps=args.reps,
        rows=rows,
    )
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
