"""A small, fast experiment: trains on a 2-core CPU in about a minute, on WikiText-2 (tokenized v1).

The final evaluation scores the first 32,768 tokens of each split (the printed perplexities say so);
drop ``eval_max_tokens`` to score whole splits.
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "baseline.py",
    {
        "name": "tiny",
        "block_size": 128,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 64,
        "dropout": 0.0,
        "dataset": "wikitext-2-v1",
        "batch_size": 8,
        "micro_batch_size": 8,
        "max_steps": 150,
        "lr": 3e-3,
        "warmup_steps": 15,
        "eval_interval": 50,
        "eval_batches": 4,
        "eval_stride": 64,
        "eval_max_tokens": 32768,
        "ckpt_interval": 50,
        "log_interval": 10,
    },
)
