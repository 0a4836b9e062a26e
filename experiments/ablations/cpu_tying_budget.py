"""The tying budget curve's base: the CPU study's model on a slice of WikiText-2 small enough to overfit.

Press & Wolf (2017) report tying as a regulariser: it helps most where a model sees its text many times and
begins to memorise it. The CPU study's 128-step runs see 5% of an epoch, where nothing overfits, so this file
moves to that regime instead: the CPU study's model (4 layers, width 64, 4 heads, context 128) trains on the
first 131,072 tokens of the training split, one epoch every 128 steps of 8 x 128 tokens, with dropout 0.1 and
early stopping (validation estimated every 32 steps on the same 16,384 tokens; the run stops after four
estimates, one epoch, without a new best, and ends at its best weights). The study file
``sweeps/studies/cpu-tying-budget.yaml`` sets the budget (1, 4 or 16 epochs, with 10% warmup each), the
tying, the learning rate and the seed of every run.
"""

from pathlib import Path

from minigpt.config import derive

config = derive(
    Path(__file__).parent / "cpu_study.py",
    {
        "name": "cpu-tying-budget",
        "model.dropout": 0.1,
        "data.train_tokens": 131_072,
        "train.eval_interval": 32,
        "train.eval_batches": 2,
        "train.early_stop_patience": 4,
        "train.dense_log_steps": 0,
    },
)
