"""Tokenize an experiment's data ahead of training, so its runs (every torchrun process too) find it cached.

    python -m minigpt.data experiments/tinystories.py [--key=value ...]

Takes the same overrides as ``run.py``. Prints each split's tokens, shards and size on disk. Running it
again reads the caches and tokenizes nothing.
"""

from __future__ import annotations

import sys

from minigpt.config import ConfigError, apply_overrides, load_experiment, parse_overrides
from minigpt.data import (
    SPLITS,
    DataError,
    cache_root,
    has_split,
    load_split,
    load_tokenizer,
    resolve_source,
    tokenizer_fingerprint,
)


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        config = apply_overrides(load_experiment(argv[0]), parse_overrides(argv[1:]))
        tokenizer = load_tokenizer(config.data)
        for split in SPLITS:
            if not has_split(config.data, split):
                print(f"{split}: none")
                continue
            tokens = load_split(config.data, split, tokenizer)
            folder = cache_root(config.data) / resolve_source(config.data, split).key
            files = list(
                folder.glob(f"{split}.{tokenizer_fingerprint(tokenizer)}*.bin")
            )  # one file or shards
            size = sum(p.stat().st_size for p in files)
            mib = size / 2**20
            print(f"{split}: {len(tokens):,} tokens in {len(files)} file(s), {mib:,.1f} MiB under {folder}")
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
