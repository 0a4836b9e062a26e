"""The long CPU study's base: the CPU study's model (4 layers, width 64, 4 heads, context 128), 8x longer.

``sweeps/studies/cpu-long.yaml`` asks whether post-LN trains where the literature says it does, with warmup,
once a run is long enough for warmup to matter. Each run trains 1,024 steps of 8 x 128 tokens (1,048,576
tokens, about half an epoch of WikiText-2) with 10% warmup, logs every step of the first 100 with per-block
diagnostics, estimates validation loss every 64 steps from step 0 (on 8,192 tokens), and scores the first
16,384 tokens of validation and of test at the end. The study file sets the learning rate, the warmup and
the seed of every run. At about 2,400 tokens/s a run takes about 7.5 minutes on one core.
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "cpu_study.py",
    {
        "name": "cpu-long",
        "train.max_steps": 1024,
        "train.warmup_steps": 102,
        "train.eval_interval": 64,
    },
)
