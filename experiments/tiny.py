"""A small, fast experiment: trains on a 2-core CPU in about a minute, on WikiText-2 (tokenized v1)."""

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
        "batch_size": 16,
        "micro_batch_size": 16,
        "max_steps": 200,
        "lr": 3e-3,
        "warmup_steps": 20,
        "eval_interval": 50,
        "eval_batches": 10,
        "eval_stride": 64,
        "ckpt_interval": 50,
        "log_interval": 10,
    },
)
