"""Data-preparation speed: seconds to tokenize WikiText-2 train and write its token cache.

    python -m benchmarks.data_prep --reps 3 --out data_prep.json

Each repetition starts from an empty cache directory and runs ``minigpt.data.load_split`` (read the .xz
file, tokenize, write the cache atomically); reading the compressed text is timed separately. CPU seconds
are reported beside wall seconds because on a shared machine wall time depends on the load.
The Rust tokenizer encodes the chunks of a batch on all cores unless TOKENIZERS_PARALLELISM=false. The token
count is checked against the whole-stream count in the asset root's README (2,448,382 for wikitext-2-v1).

Then the tokenizing alone, two ways on the same chunks, alternating: the tokenizer's own call (which
computes character offsets and drops them) and ``minigpt.data.encode_batch`` (the fast backend's
``encode_batch_fast``), with the ratio; the ids of the two must be equal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from benchmarks.common import environment, print_table, write_json
from minigpt import data
from minigpt.config import DataConfig

# GPT-2 tokens of each split encoded as one stream (/work/shared/data/README.md).
EXPECTED_TOKENS = {("wikitext-2-v1", "train"): 2_448_382, ("wikitext-2-v1", "val"): 258_659}


def _cpu_seconds() -> float:
    """User + system CPU time of this process, the tokenizer's worker threads included."""
    times = os.times()
    return times.user + times.system


def compare_encoders(tokenizer, text: str, reps: int) -> dict[str, dict]:
    """Seconds and CPU seconds to encode ``text``'s chunks in batches, by the tokenizer's own call and by
    ``data.encode_batch``, alternating ``reps`` times; stops if their ids differ."""
    chunks, step = data._safe_chunks(text), data.CHUNKS_PER_BATCH

    def own_call(batch: list[str]) -> list[list[int]]:
        return tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]

    ways = {
        "the tokenizer's own call": own_call,
        "encode_batch (encode_batch_fast)": lambda batch: data.encode_batch(tokenizer, batch),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    ids: dict[str, list[list[int]]] = {}
    for _ in range(reps):
        for name, encode in ways.items():
            cpu_start, start = _cpu_seconds(), time.perf_counter()
            ids[name] = [i for at in range(0, len(chunks), step) for i in encode(chunks[at : at + step])]
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(_cpu_seconds() - cpu_start)
    first, second = ids.values()
    if first != second:
        raise SystemExit("the two ways of encoding gave different ids")
    return {
        name: dict(
            median=statistics.median(seconds[name]),
            min=min(seconds[name]),
            max=max(seconds[name]),
            cpu_median=statistics.median(cpu[name]),
        )
        for name in ways
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="wikitext-2-v1")
    parser.add_argument("--split", default="train", choices=data.SPLITS)
    parser.add_argument("--data-dir", default="", help="asset root; default $MINIGPT_DATA_DIR")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    tokenizer = data.load_tokenizer(DataConfig(dataset=args.dataset, data_dir=args.data_dir))
    read_times, prep_times, prep_cpu, counts = [], [], [], set()
    for _ in range(args.reps):
        with tempfile.TemporaryDirectory() as cache_dir:
            config = DataConfig(dataset=args.dataset, data_dir=args.data_dir, cache_dir=cache_dir)
            start = time.perf_counter()
            data.resolve_source(config, args.split).read()
            read_times.append(time.perf_counter() - start)
            cpu_start, start = _cpu_seconds(), time.perf_counter()
            split = data.load_split(config, args.split, tokenizer, show_progress=False)
            prep_times.append(time.perf_counter() - start)
            prep_cpu.append(_cpu_seconds() - cpu_start)
            counts.add(len(split))
    expected = EXPECTED_TOKENS.get((args.dataset, args.split))
    if len(counts) != 1 or (expected is not None and counts != {expected}):
        raise SystemExit(f"token count {sorted(counts)} differs from the whole-stream count {expected}")
    prep = dict(median=statistics.median(prep_times), min=min(prep_times), max=max(prep_times))
    read = dict(median=statistics.median(read_times), min=min(read_times), max=max(read_times))
    tokens = counts.pop()
    print_table(
        f"data preparation: {args.dataset} {args.split}, median (min-max) of {args.reps} from an empty cache",
        ["step", "seconds", "CPU seconds (all threads)", "tokens", "tokens/s"],
        [
            ["read .xz text", f"{read['median']:.2f} ({read['min']:.2f}-{read['max']:.2f})", "", "", ""],
            [
                "read + tokenize + cache",
                f"{prep['median']:.2f} ({prep['min']:.2f}-{prep['max']:.2f})",
                f"{statistics.median(prep_cpu):.2f}",
                f"{tokens:,}",
                f"{tokens / prep['median']:,.0f}",
            ],
        ],
    )
    text = data.resolve_source(DataConfig(dataset=args.dataset, data_dir=args.data_dir), args.split).read()
    encoders = compare_encoders(tokenizer, text, args.reps)
    (own, fast) = encoders.values()
    print_table(
        f"tokenizing alone, median (min-max) of {args.reps}, alternating; same ids",
        ["way", "seconds", "CPU seconds (all threads)", "tokens/s"],
        [
            [
                name,
                f"{e['median']:.2f} ({e['min']:.2f}-{e['max']:.2f})",
                f"{e['cpu_median']:.2f}",
                f"{tokens / e['median']:,.0f}",
            ]
            for name, e in encoders.items()
        ]
        + [
            [
                "own call / encode_batch",
                f"{own['median'] / fast['median']:.2f}x",
                f"{own['cpu_median'] / fast['cpu_median']:.2f}x",
                "",
            ]
        ],
    )
    result = dict(
        environment=environment(torch.get_num_threads(), torch.device("cpu")),
        args=vars(args),
        read_s=read,
        prepare_s=prep,
        prepare_cpu_s=prep_cpu,
        tokens=tokens,
        encoders=encoders,
    )
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
