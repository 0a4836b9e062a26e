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
        "model.block_size": 128,
        "model.n_layer": 2,
        "model.n_head": 2,
        "model.n_embd": 64,
        "model.dropout": 0.0,
        "data.dataset": "wikitext-2-v1",
        "train.batch_size": 8,
        "train.micro_batch_size": 8,
        "train.max_steps": 150,
        "train.lr": 3e-3,
        "train.warmup_steps": 15,
        "train.eval_interval": 50,
        "train.eval_batches": 4,
        "train.eval_stride": 64,
        "train.eval_max_tokens": 32768,
        "train.ckpt_interval": 50,
        "train.log_interval": 10,
    },
)
