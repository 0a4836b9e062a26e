"""Generation speed: our KV-cached ``GPT.generate`` against Hugging Face ``generate`` on the same weights.

    python -m benchmarks.generate                      # seed config: 6 layers, 512 wide, 8 heads
    python -m benchmarks.generate --config gpt2 --out gen.json

Both sides run in float32 with the same torch thread count, decode greedily (or with the same fixed
seed when --sample) for exactly --new-tokens tokens (HF's early stop is disabled). After one untimed run
each (whose greedy outputs are compared), the two sides alternate for --reps runs. Reported: median
tokens/s (min-max), per batch size, and our speed-up over HF.

At batch 1 a token reads every weight once, so the time of the model's matmuls alone (each linear layer and
the head applied to one row, nothing else) is a floor no fp32 decoder of these weights goes below on these
threads, whatever its Python or cache. The benchmark measures that floor beside the table and says how close
each side comes to it, and whether twice HF's speed is within it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

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


def matmul_floor(model: nn.Module, reps: int) -> dict[str, float]:
    """Seconds a batch-1 token spends in ``model``'s matmuls alone: every ``nn.Linear`` weight (a tied head
    once) applied to one row, timed ``reps`` times after one untimed pass; median, min, max, the weights'
    bytes, and ``read_s``, the median seconds of summing the same weights (a plain read of those bytes: when
    the matmuls take no longer, they run at the memory's speed, not the matmul kernel's)."""
    weights = list({id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}.values())
    rows = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights}

    def timed(one_pass: Callable[[], None]) -> list[float]:
        one_pass()
        seconds = []
        for _ in range(reps):
            start = time.perf_counter()
            one_pass()
            seconds.append(time.perf_counter() - start)
        return seconds

    with torch.inference_mode():
        matmuls = timed(lambda: [F.linear(rows[w.shape[1]], w) for w in weights])
        reads = timed(lambda: [w.sum() for w in weights])
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    return dict(
        median=statistics.median(matmuls),
        min=min(matmuls),
        max=max(matmuls),
        bytes=nbytes,
        read_s=statistics.median(reads),
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

    floor = matmul_floor(ours, reps=max(20, 10 * args.reps))
    ceiling = 1 / floor["median"]  # tokens/s of one sequence that only reads the weights
    at_batch_1 = next((row for row in rows if row["batch_size"] == 1), None)
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
    bandwidth = floor["bytes"] / floor["median"] / 1e9
    print(
        f"batch-1 floor: the model's matmuls alone take {floor['median'] * 1e3:.1f} ms a token "
        f"({floor['bytes'] / 1e6:.0f} MB of weights at {bandwidth:.1f} GB/s; summing them takes "
        f"{floor['read_s'] * 1e3:.1f} ms), so no decoder of these fp32 weights passes {ceiling:.1f} tokens/s "
        f"on {args.threads} thread{'s' if args.threads != 1 else ''}"
    )
    if at_batch_1 is not None:
        ours_1, hf_1 = at_batch_1["ours_tokens_per_s"]["median"], at_batch_1["hf_tokens_per_s"]["median"]
        shares = dict(ours=ours_1 / ceiling, hf=hf_1 / ceiling, twice_hf=2 * hf_1 / ceiling)
        at_batch_1.update({f"{side}_of_ceiling": share for side, share in shares.items()})
        print(
            f"at batch 1 MiniGPT runs at {shares['ours']:.0%} of that ceiling and HF at {shares['hf']:.0%}; "
            f"twice HF ({2 * hf_1:.1f} tokens/s) is {shares['twice_hf']:.0%} of it"
        )
    result = dict(
        environment=environment(args.threads, device),
        config=args.config,
        model_config=CONFIGS[args.config],
        sample=args.sample,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        reps=args.reps,
        matmul_floor_s=floor,
        ceiling_tokens_per_s=ceiling,
        rows=rows,
    )
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
