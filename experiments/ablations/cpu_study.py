"""The CPU study's base variant: 4 layers, width 64, 4 heads, context 128, pre-LN, tied embeddings.

Small enough that the whole study (``sweeps/studies/cpu.yaml``: 19 variants, a learning-rate grid for 8 of
them, then five seeds each, scored on the whole test split) fits about 5 CPU-hours: each run trains 128 steps
of 8 x 128 tokens (131,072 tokens, about 5% of an epoch of WikiText-2) with 10% warmup, logs every step of the
first 100 with per-block diagnostics, estimates validation loss every 32 steps from step 0 (on 8,192 tokens),
and scores the first 16,384 tokens of validation and of test at the end. The study file sets the learning
rate and the seed of every run.
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "cpu_base.py",
    {
        "name": "cpu-study",
        "model.n_embd": 64,
        "train.batch_size": 8,
        "train.micro_batch_size": 8,
        "train.max_steps": 128,
        "train.warmup_steps": 13,
        "train.eval_interval": 32,
        "train.eval_batches": 1,
        "train.eval_max_tokens": 16384,
        "train.dense_log_steps": 100,
        "log.project": "minigpt-studies",
    },
)
