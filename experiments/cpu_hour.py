"""The best model a 2-core CPU trains in one hour: WikiText-2 (tokenized v1), stopped by the clock.

Training stops after ``train.max_minutes`` of training time (evaluation excluded) rather than at a step
count, and the cosine schedule follows the clock, so the same file suits faster and slower machines: a
faster one simply sees more tokens. ``max_steps`` is only a ceiling.

The recipe is the baseline's family (GPT-2 tokenizer, pre-LN GPT, AdamW, linear warmup then cosine decay).
Width, depth and learning rate were chosen by the sweep ``sweeps/cpu-hour.yaml``, run with the project's
own runner on a quiet 2-core machine; the README's "A model in one CPU hour" gives its results, the
measured perplexities of this file and samples from the model it trains.
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "baseline.py",
    {
        "name": "cpu-hour",
        "model.block_size": 256,
        "model.n_layer": 4,
        "model.n_head": 4,
        "model.n_embd": 256,
        "model.dropout": 0.0,
        "model.norm_position": "pre",
        "model.tie_embeddings": True,
        "data.dataset": "wikitext-2-v1",
        "train.batch_size": 16,
        "train.micro_batch_size": 16,
        "train.max_steps": 1_000_000,
        "train.max_minutes": 60,
        "train.lr": 3e-3,
        "train.warmup_steps": 100,
        "train.min_lr_ratio": 0.1,
        "train.eval_interval": 250,
        "train.eval_batches": 8,
        "train.eval_stride": 128,
        "train.ckpt_interval": 1000,
        "train.keep_last": 1,
        "train.log_interval": 25,
        "log.project": "minigpt-cpu-hour",
    },
)
