"""The CPU hour at context 64: ``experiments/cpu_hour.py`` with a quarter of the context.

nanoGPT's CPU recipe trains at context 64, so this file gives a figure that can be set beside runs of that
recipe. Everything but the context is the CPU hour's: the same model, learning rate, schedule and clock,
and the same 4,096 tokens a step (64 sequences of 64 instead of 16 of 256). The learning rate was tuned at
context 256, not here. Final scores are on whole splits at context 64, non-overlapping and with a sliding
window of stride 32.
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "cpu_hour.py",
    {
        "name": "cpu-hour-ctx64",
        "model.block_size": 64,
        "train.batch_size": 64,
        "train.micro_batch_size": 64,
        "train.eval_stride": 32,
    },
)
